#!/usr/bin/env bash
# Prints the benchmark table (release build). `scripts/bench.sh [SECTION]`
# runs one section; with none, all of them. Figures vary with the machine's
# load: compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh
source scripts/lib/ensure-deps.sh

section="${1:-all}"
cargo build --release --workspace --bins --quiet
export FILESHARE_PROFILE=release
target="${CARGO_TARGET_DIR:-target}"

run_tracker() {
  echo "== tracker: 64 clients (one connection each), list-files and locate for 5 s (BENCH_SECS, BENCH_CLIENTS to change)"
  "$target/release/bench_tracker"
}

run_cluster() {
  echo "== cluster: 64 clients (one connection each) writing (create-group, share-file) for 5 s through one tracker, then through two replicated trackers (BENCH_SECS, BENCH_CLIENTS to change)"
  "$target/release/bench_cluster"
}

case "$section" in
  tracker) run_tracker ;;
  cluster) run_cluster ;;
  all) run_tracker; run_cluster ;;
  *) echo "unknown section $section (tracker, cluster)" >&2; exit 2 ;;
esac
