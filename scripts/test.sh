#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the end-to-end tests
# that start real trackers and daemons and mount real FUSE filesystems.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ensure-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== the code's shape: module layers, file sizes, folder sizes"
scripts/shape.sh
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== build binaries"
cargo build --workspace --bins --quiet
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --quiet -- --test-threads="${FILESHARE_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Only libtest's own result lines count: a test's output may say "failed".
results=$(grep -E '^test result: ' "$log" || true)
passed=$(grep -Eo '[0-9]+ passed' <<<"$results" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' <<<"$results" | awk '{s += $1} END {print s + 0}')
echo
echo "summary: $passed passed, $failed failed"
exit "$status"
