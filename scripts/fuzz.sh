#!/usr/bin/env bash
# Runs the cargo-fuzz targets of protocol/fuzz one after another, each for
# FUZZ_SECONDS (default 600), niced, and prints each run's figures.
# Not part of CI or scripts/test.sh.
#
#   cargo install cargo-fuzz          # once
#   scripts/fuzz.sh                   # every target
#   scripts/fuzz.sh frame names       # some
#
# cargo-fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets a
# stable toolchain accept them (or use `cargo +nightly fuzz`).
set -euo pipefail
cd "$(dirname "$0")/../protocol"
secs=${FUZZ_SECONDS:-600}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame messages names trackers_file store_meta)
fi
export RUSTC_BOOTSTRAP=1
nice -n 19 cargo fuzz build -O
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    log=fuzz/logs/$t.log
    echo "fuzzing $t for $secs s (log: protocol/$log)"
    if nice -n 19 cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
        echo "$t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1), no crash"
    else
        echo "$t: CRASH, see $log and fuzz/artifacts/$t/"
    fi
done
