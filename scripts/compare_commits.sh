#!/usr/bin/env bash
# Throughput of two commits side by side, interleaved (A B A B), on one cluster file:
#   scripts/compare_commits.sh OLD_COMMIT [NEW_COMMIT=working tree] [CLUSTER] [DURATION_S] [-- extra run flags]
# Each run: mdiexit run --admission rate for DURATION_S (20 s warm-up). Prints each run and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: $0 OLD_COMMIT [NEW_COMMIT] [CLUSTER] [DURATION_S]}
NEW=${2:-}
CLUSTER=${3:-examples/edge4.yaml}
DURATION=${4:-60}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'git worktree remove --force "$WORK/old" >/dev/null 2>&1 || true; [[ -n "$NEW" ]] && git worktree remove --force "$WORK/new" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
git worktree add --detach "$WORK/old" "$OLD" >/dev/null 2>&1
SRC_NEW=$PWD/src
if [[ -n "$NEW" ]]; then git worktree add --detach "$WORK/new" "$NEW" >/dev/null 2>&1; SRC_NEW=$WORK/new/src; fi
run() {  # label src
  PYTHONPATH=$2 "$PY" -m mdiexit.cli run --cluster "$CLUSTER" --mode mdi-exit --admission rate --duration "$DURATION" \
    --warmup 20 --quiet --out "$WORK/$1" >/dev/null 2>&1 || true
  "$PY" -c "import json,sys; s=json.load(open('$WORK/$1/summary.json')); print(f\"$1 {s['throughput_per_s']:.1f} items/s, accuracy {s['accuracy']:.4f}, p95 {s['latency_ms']['p95']:.0f} ms, lost {s['lost']}, efficiency {s.get('efficiency', float('nan')):.3f}\")"
}
{ run old1 "$WORK/old/src"; run new1 "$SRC_NEW"; run old2 "$WORK/old/src"; run new2 "$SRC_NEW"; } | tee "$WORK/log"
"$PY" - "$WORK/log" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {k: statistics.median(float(r[1]) for r in rows if r[0].startswith(k)) for k in ("old", "new")}
print(f"median: old {med['old']:.1f}, new {med['new']:.1f} items/s; new/old = {med['new'] / med['old']:.3f}")
PY
