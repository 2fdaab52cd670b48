#!/usr/bin/env bash
# The whole life on one machine, in under a minute: a tracker, two users, a
# group with a request accepted, a file copied into one user's mount and
# read back byte for byte through the other's. Leaves no process or mount.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cargo build --workspace --bins --quiet
bin="$PWD/target/debug"
work=$(mktemp -d /tmp/fileshare-demo.XXXXXX)
pids=()
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for m in "${mounts[@]}"; do
    grep -q " $m fuse" /proc/mounts && fusermount3 -u -z "$m" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
echo "127.0.0.1:$port" > "$work/trackers.txt"

step "a tracker on 127.0.0.1:$port, its key pinned in the trackers file"
fp=$("$bin/fileshare-tracker" "$work/trackers.txt" 1 --data-dir "$work/tracker" --fingerprint)
echo "127.0.0.1:$port $fp" > "$work/trackers.txt"
cat "$work/trackers.txt"
"$bin/fileshare-tracker" "$work/trackers.txt" 1 --data-dir "$work/tracker" \
  >"$work/tracker.log" 2>&1 </dev/null &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

as() {  # as USER fsd-args...
  local user=$1; shift
  echo "\$ fsd $*   # as $user"
  FILESHARE_PASSWORD="secret-$user" "$bin/fsd" --home "$work/$user" --trackers "$work/trackers.txt" "$@"
}

step "two users"
as alice create-user alice
as alice login alice
as bob create-user bob
as bob login bob

step "alice creates a group; bob asks to join; alice accepts"
as alice create-group demo
as bob join-group demo
as alice list-requests demo
as alice accept-request demo bob
as bob list-groups

step "both mount the swarm"
for u in alice bob; do
  mkdir -p "$work/mnt-$u"
  FILESHARE_PASSWORD="secret-$u" "$bin/fsd" --home "$work/$u" --trackers "$work/trackers.txt" \
    mount "$work/mnt-$u" --listen 127.0.0.1:0 >"$work/$u.log" 2>&1 </dev/null &
  pids+=($!)
  mounts+=("$work/mnt-$u")
done
for u in alice bob; do
  for _ in $(seq 200); do grep -q " $work/mnt-$u fuse" /proc/mounts && break; sleep 0.05; done
done
echo "\$ ls $work/mnt-bob"
ls "$work/mnt-bob"

step "alice copies a 32 MiB file into the group"
head -c $((32 << 20)) /dev/urandom > "$work/video.bin"
echo "\$ cp video.bin mnt-alice/demo/"
cp "$work/video.bin" "$work/mnt-alice/demo/"

step "bob lists the group and reads the file from alice's daemon"
for _ in $(seq 100); do [ -e "$work/mnt-bob/demo/video.bin" ] && break; sleep 0.1; done
echo "\$ ls -l mnt-bob/demo"
ls -l "$work/mnt-bob/demo"
echo "\$ cmp video.bin mnt-bob/demo/video.bin"
start=$(date +%s.%N)
cmp "$work/video.bin" "$work/mnt-bob/demo/video.bin"
end=$(date +%s.%N)
echo "identical ($(echo "scale=2; 32 / ($end - $start)" | bc 2>/dev/null || echo "?") MiB/s, debug build)"
if command -v getfattr >/dev/null; then
  echo "\$ getfattr -d mnt-bob/demo/video.bin"
  getfattr -d --absolute-names "$work/mnt-bob/demo/video.bin"
fi
as bob list-files demo

step "bob also downloads it to a plain file, through his daemon"
as bob download-file demo video.bin "$work/copy.bin"
cmp "$work/video.bin" "$work/copy.bin" && echo "copy.bin identical"
as bob show-downloads

step "bob's status, and his dashboard (open the URL in a browser while the demo runs)"
as bob status
as bob ui

step "unmount; nothing is left behind"
for m in "${mounts[@]}"; do fusermount3 -u "$m"; done
mounts=()
for p in "${pids[@]:1}"; do wait "$p" 2>/dev/null || true; done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
pids=()
if grep -q " $work" /proc/mounts; then echo "a mount was left behind" >&2; exit 1; fi
echo "done: no process, no mount left."
