#!/usr/bin/env bash
# The design's shape, checked so later work cannot undo it unseen: modules
# import one way (scripts/modgraph.py), no source file over 800 lines, no
# source folder over 10 files.
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=(protocol/src tracker/src fsd/src)
status=0
python3 scripts/modgraph.py "${dirs[@]}" >/dev/null || status=1
while read -r n f; do
  echo "error: $f has $n lines (at most 800)" >&2
  status=1
done < <(find "${dirs[@]}" -name '*.rs' -exec wc -l {} + | awk '$2 != "total" && $1 > 800')
while read -r d; do
  n=$(find "$d" -maxdepth 1 -type f | wc -l)
  if [ "$n" -gt 10 ]; then
    echo "error: $d holds $n files (at most 10)" >&2
    status=1
  fi
done < <(find "${dirs[@]}" -type d)
exit "$status"
