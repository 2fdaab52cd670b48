#!/usr/bin/env bash
# Prints the benchmark table (release build). `scripts/bench.sh [SECTION]`
# runs one section; with none, all of them. Figures vary with the machine's
# load: compare within one run. Sections:
#   tracker  64 clients listing and locating against one tracker; then the
#            tracker's memory and CPU for 10,000 announced peers of one file
#            and a Locate among them (BENCH_PEERS to change)
#   cluster  write throughput through two and three replicated trackers against one
#   mount    a 1 GiB file through FUSE: cold from 1, 2 and 4 seeders, warm,
#            first 4 KiB, the reader's peak memory (needs root and FUSE);
#            then lone readers of a 64 MiB file from four seeders whose
#            uplinks tbf shapes to 20 MB/s, each daemon in a network
#            namespace of its own (also needs iproute2; BENCH_SHAPED=0
#            skips it, BENCH_SHAPED=only runs only it); then re-reads of
#            a 512 MiB file held whole, through the daemon and with
#            passthrough, against the page cache (BENCH_HELD=0 skips it,
#            BENCH_HELD=only runs only it; see docs/passthrough.md)
#   swarm    1 source and 8-48 readers of one file, every daemon with an
#            upload limit, against the fluid-model bound D_min (needs root
#            and FUSE; writes docs/swarm.csv and docs/swarm.svg). With
#            BENCH_SHAPE=net each daemon runs in a network namespace of its
#            own, its uplink shaped by tc tbf and no rate flag (also needs
#            iproute2; writes docs/swarm-net.csv and docs/swarm-net.svg).
#            BENCH_HOG=N runs N busy loops at normal priority meanwhile (CPU
#            starvation as when a build takes the cores), ended by PID
#   nat      a 64 MiB file read through each way daemons reach each other
#            across home routers (direct, reverse, punched, relayed), in
#            network namespaces with nftables routers; the relay's tracker
#            CPU per GiB (needs root, FUSE, iproute2 and nftables;
#            BENCH_NAT_CASES=punched,relayed to pick cases)
#   sim      a simulated swarm of one source and 1,000 and 10,000 readers of
#            a 64 MiB file, every peer running the daemon's own picker and
#            upload scheduler and the tracker's Locate sample, against
#            D_min (no root; BENCH_SIM_PEERS=1000,10000,
#            BENCH_SIM_CASES=equal,fast,staggered,download,
#            BENCH_SIM_PIECES=128 to change; see docs/swarm-scale.md)
#   soak     64 readers through two mounts, a stream of `ls -l`, logins and
#            list-groups, with floods running (half-sent 4 MiB frames at the
#            tracker and the seeder's peer port, a password guesser, a peer
#            flooding requests it never reads): zero errors, every byte
#            compared, RSS at start and end, p99 of `ls -l`; SOAK_SECS
#            (default 300) sets the duration. Not part of `all`.
#   logins   100,000 logins (sessions opened) through one tracker, then its
#            data directory's size and the time a restart takes to serve
#            (BENCH_LOGINS to change). Not part of `all`: the password
#            checks take minutes.
#
# Before and after in one run: BENCH_BASELINE="REV [REV...]" (commits, tags
# or branches) builds each REV's fsd and fileshare-tracker into
# target/baseline-REV/ and runs each chosen section against every REV's
# binaries in turn (with REV's own benchmark programs), then against this
# tree's.
# Adding a section: a run_NAME function and NAME in SECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh

SECTIONS=(tracker cluster mount swarm nat sim)
section="${1:-all}"
cargo build --release --workspace --bins --quiet
export FILESHARE_PROFILE=release
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
bin_dir="$target/release"

run_tracker() {
  echo "== tracker: 64 clients (one connection each), list-files and locate for 5 s (BENCH_SECS, BENCH_CLIENTS to change)"
  "$bin_dir/bench_tracker"
  echo "== tracker: ${BENCH_PEERS:-10000} announced peers of one 1 GiB file with bitfields: memory, CPU, a Locate (BENCH_PEERS to change)"
  if [ -x "$bin_dir/bench_tracker_peers" ]; then
    "$bin_dir/bench_tracker_peers"
  else
    echo "(this build has no bench_tracker_peers)"
  fi
}

run_mount() {
  echo "== mount: a 1 GiB file through FUSE: cold from 1, 2 and 4 seeders, warm, first 4 KiB, reader memory (BENCH_MIB to change); lone readers from four seeders on 20 MB/s shaped uplinks (BENCH_SHAPED=0 skips, =only runs only that); re-reads of a 512 MiB file held whole, through the daemon and with passthrough, against the page cache (BENCH_HELD=0 skips, =only runs only that)"
  "$bin_dir/bench_mount"
}

run_swarm() {
  if [ "${BENCH_SHAPE:-}" = net ]; then
    echo "== swarm: many readers of one file through their mounts, each daemon in a network namespace with its uplink shaped by tbf, no rate flag (BENCH_CASES=1,3 to pick cases)"
  else
    echo "== swarm: many readers of one file through their mounts, each daemon with --max-upload-rate (BENCH_CASES=1,3 to pick cases)"
  fi
  "$bin_dir/bench_swarm"
}

run_nat() {
  echo "== nat: a ${BENCH_MIB:-64} MiB file read cold from one seeder through each path across nftables home routers in network namespaces (BENCH_MIB, BENCH_NAT_CASES to change)"
  "$bin_dir/bench_nat"
}

run_sim() {
  echo "== sim: one source and ${BENCH_SIM_PEERS:-1000,10000} readers of a simulated ${BENCH_SIM_PIECES:-128}-piece file, the daemon's picker and upload scheduler and the tracker's sample, against D_min (BENCH_SIM_PEERS, BENCH_SIM_CASES, BENCH_SIM_PIECES to change)"
  if [ -x "$bin_dir/bench_sim" ]; then
    "$bin_dir/bench_sim"
  else
    echo "(this build has no bench_sim)"
  fi
}

run_soak() {
  echo "== soak: 64 readers through two mounts, ls -l, logins and list-groups under floods for ${SOAK_SECS:-300} s (SOAK_SECS to change)"
  "$bin_dir/bench_soak"
}

run_logins() {
  echo "== logins: ${BENCH_LOGINS:-100000} logins through one tracker, its data directory, the time a restart takes to serve (BENCH_LOGINS to change)"
  if [ -x "$bin_dir/bench_logins" ]; then
    "$bin_dir/bench_logins"
  else
    echo "(this build has no bench_logins)"
  fi
}

run_cluster() {
  echo "== cluster: 64 clients (one connection each) writing (create-group, share-file) for 5 s through one tracker, then through two, then three replicated trackers (BENCH_SECS, BENCH_CLIENTS to change)"
  "$bin_dir/bench_cluster"
}

if [ "$section" = all ]; then
  chosen=("${SECTIONS[@]}")
elif [[ " ${SECTIONS[*]} soak logins " == *" $section "* ]]; then
  chosen=("$section")
else
  echo "unknown section $section (${SECTIONS[*]})" >&2
  exit 2
fi

revs=()
if [ -n "${BENCH_BASELINE:-}" ]; then
  src=$(mktemp -d)
  rmdir "$src"
  trap 'git worktree remove --force "$src" >/dev/null 2>&1 || rm -rf "$src"' EXIT
  for r in $BENCH_BASELINE; do
    rev=$(git rev-parse --short "$r")
    revs+=("$rev")
    echo "== building the baseline $rev into $target/baseline-$rev"
    git worktree add --detach --force "$src" "$rev" >/dev/null
    # One build directory for every baseline: their dependencies are
    # built once.
    # REV's own benchmark programs run REV's binaries, so a harness that
    # changed since cannot skew the figures.
    CARGO_TARGET_DIR="$target/baseline" cargo build --release --quiet \
      --manifest-path "$src/Cargo.toml" --workspace --bins
    mkdir -p "$target/baseline-$rev/release"
    find "$target/baseline/release" -maxdepth 1 -type f -executable \
      -exec cp {} "$target/baseline-$rev/release/" \;
    git worktree remove --force "$src"
  done
fi

for s in "${chosen[@]}"; do
  for rev in "${revs[@]}"; do
    echo "-- baseline $rev"
    (bin_dir="$target/baseline-$rev/release" CARGO_TARGET_DIR="$target/baseline-$rev" "run_$s")
  done
  [ ${#revs[@]} -eq 0 ] || echo "-- this tree"
  "run_$s"
done
