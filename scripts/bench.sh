#!/usr/bin/env bash
# Prints the benchmark table (release build). `scripts/bench.sh [SECTION]`
# runs one section; with none, all of them. Figures vary with the machine's
# load: compare within one run.
#
# Adding a section: a run_NAME function, NAME in SECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh

SECTIONS=(tracker mount)
section="${1:-all}"
cargo build --release --workspace --bins --quiet
export FILESHARE_PROFILE=release
target="${CARGO_TARGET_DIR:-target}"

run_tracker() {
  echo "== tracker: 64 clients (one connection each), list-files and locate for 5 s (BENCH_SECS, BENCH_CLIENTS to change)"
  "$target/release/bench_tracker"
}

run_mount() {
  echo "== mount: a 1 GiB file through FUSE: cold from 1, 2 and 4 seeders, warm, first 4 KiB, reader memory (BENCH_MIB to change)"
  "$target/release/bench_mount"
}

if [ "$section" = all ]; then
  for s in "${SECTIONS[@]}"; do "run_$s"; done
elif [[ " ${SECTIONS[*]} " == *" $section "* ]]; then
  "run_$section"
else
  echo "unknown section $section (${SECTIONS[*]})" >&2
  exit 2
fi
