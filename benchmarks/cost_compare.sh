#!/usr/bin/env bash
# Cold default audit, two checkouts side by side (A B A B …, fresh cache each run): what a change costs.
#   bash benchmarks/cost_compare.sh OLD_CHECKOUT NEW_CHECKOUT [SCENARIO] [REPEATS]  > results/cost-LABEL.log
# Prints one line per run: repeat, side, wall seconds, load average, the audit's own stage timings.
set -euo pipefail
OLD=$1; NEW=$2; S=${3:-../shared/bench-dev/dev-medium}; N=${4:-2}
PY=${PYTHON:-$(pwd)/.venv/bin/python}
for rep in $(seq 1 "$N"); do
  for side in old new; do
    D=$OLD; [ "$side" = new ] && D=$NEW
    C=$(mktemp -d); O=$(mktemp -d)/out
    t0=$(date +%s.%N)
    (cd "$D" && FPINDEX_CACHE=$C PYTHONPATH=$D "$PY" -m fpindex audit --generated "$S/generated" --real "$S/test" \
        --used "$S/train/used" --not-used "$S/train/not_used" --out "$O" -q > /dev/null)
    t1=$(date +%s.%N)
    echo "$rep $side $(echo "$t1 - $t0" | bc) load $(cut -d' ' -f1 /proc/loadavg) $("$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['timings']))" "$O/summary.json")"
    rm -rf "$C" "$(dirname "$O")"
  done
done
