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
#
# Before and after in one run: BENCH_BASELINE=REV (a commit, tag or branch)
# builds REV's fsd and fileshare-tracker into target/baseline/ and runs each
# chosen section twice, first against REV's binaries, then against this
# tree's; the benchmark programs themselves are this tree's.
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
  chosen=("${SECTIONS[@]}")
elif [[ " ${SECTIONS[*]} " == *" $section "* ]]; then
  chosen=("$section")
else
  echo "unknown section $section (${SECTIONS[*]})" >&2
  exit 2
fi

if [ -n "${BENCH_BASELINE:-}" ]; then
  rev=$(git rev-parse --short "$BENCH_BASELINE")
  case "$target" in
    /*) base_dir="$target/baseline" ;;
    *) base_dir="$PWD/$target/baseline" ;;
  esac
  src=$(mktemp -d)
  trap 'git worktree remove --force "$src" >/dev/null 2>&1 || rm -rf "$src"' EXIT
  echo "== building the baseline $rev into $base_dir"
  git worktree add --detach --force "$src" "$rev" >/dev/null
  CARGO_TARGET_DIR="$base_dir" cargo build --release --quiet \
    --manifest-path "$src/Cargo.toml" -p fsd -p fileshare-tracker
fi

for s in "${chosen[@]}"; do
  if [ -n "${BENCH_BASELINE:-}" ]; then
    echo "-- baseline $rev"
    FILESHARE_BIN_DIR="$base_dir/release" "run_$s"
    echo "-- this tree"
  fi
  "run_$s"
done
