#!/usr/bin/env bash
# Prints the benchmark table (release build). `scripts/bench.sh [SECTION]`
# runs one section; with none, all of them. Figures vary with the machine's
# load: compare within one run. Sections:
#   tracker  64 clients listing and locating against one tracker
#   cluster  write throughput through two replicated trackers against one
#   mount    a 1 GiB file through FUSE: cold from 1, 2 and 4 seeders, warm,
#            first 4 KiB, the reader's peak memory (needs root and FUSE)
#   swarm    1 source and 8-16 readers of one file, every daemon with an
#            upload limit, against the fluid-model bound D_min (needs root
#            and FUSE; writes docs/swarm.csv and docs/swarm.svg)
# Adding a section: a run_NAME function and NAME in SECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh

SECTIONS=(tracker cluster mount swarm)
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

run_swarm() {
  echo "== swarm: many readers of one file through their mounts, each daemon with --max-upload-rate (BENCH_CASES=1,3 to pick cases)"
  "$target/release/bench_swarm"
}

run_cluster() {
  echo "== cluster: 64 clients (one connection each) writing (create-group, share-file) for 5 s through one tracker, then through two replicated trackers (BENCH_SECS, BENCH_CLIENTS to change)"
  "$target/release/bench_cluster"
}

if [ "$section" = all ]; then
  for s in "${SECTIONS[@]}"; do "run_$s"; done
elif [[ " ${SECTIONS[*]} " == *" $section "* ]]; then
  "run_$section"
else
  echo "unknown section $section (${SECTIONS[*]})" >&2
  exit 2
fi
