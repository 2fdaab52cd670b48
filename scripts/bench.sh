#!/usr/bin/env bash
# Prints the benchmark table (release build). `scripts/bench.sh [SECTION]`
# runs one section; with none, all of them. Figures vary with the machine's
# load: compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh

section="${1:-all}"
cargo build --release --workspace --bins --quiet
export FILESHARE_PROFILE=release

run_mount() {
  echo "== mount: 1 GiB through FUSE (BENCH_MIB to change)"
  target/release/bench_mount
}

case "$section" in
  mount) run_mount ;;
  all) run_mount ;;
  *) echo "unknown section $section (mount)" >&2; exit 2 ;;
esac
