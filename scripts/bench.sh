#!/usr/bin/env bash
# Prints the benchmark table (release build). `scripts/bench.sh [SECTION]`
# runs one section; with none, all of them. Figures vary with the machine's
# load: compare within one run.
#
# Adding a section: a run_NAME function, a case arm, and NAME in SECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."

SECTIONS=(tracker)
section="${1:-all}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --workspace --bins --quiet
export FILESHARE_PROFILE=release

run_tracker() {
  echo "== tracker: 64 clients, one connection each, list-files and locate (BENCH_SECS, BENCH_CLIENTS to change)"
  "$target/release/bench_tracker"
}

run() {
  case "$1" in
    tracker) run_tracker ;;
    *) echo "unknown section $1 (${SECTIONS[*]})" >&2; exit 2 ;;
  esac
}

if [ "$section" = all ]; then
  for s in "${SECTIONS[@]}"; do run "$s"; done
else
  run "$section"
fi
