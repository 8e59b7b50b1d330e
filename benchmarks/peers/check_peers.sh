#!/bin/sh
# Runs the peer routers on both shared datasets: the two scikit-learn
# routers of the shared README's reference, then the four tuned peers of
# issue 15 (xgb, ridge-cv, knn-cv, mf; about 10 minutes for both datasets).
# Usage: benchmarks/peers/check_peers.sh OUT_DIR [DATA_ROOT]
#   DATA_ROOT defaults to $TOROUTER_DATA, then ../shared/data beside the repository.
# Writes OUT_DIR/<dataset>-sklearn-<router>.json and .csv (predictions),
# OUT_DIR/<dataset>-<peer>.json (per-query cost model), .csv, and
# OUT_DIR/<dataset>-<peer>-meancost.json (each expert's mean training cost).
# One job at a time: the machine is shared and the timings are single-core.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [DATA_ROOT]" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
data_root=${2:-${TOROUTER_DATA:-$here/../../../shared/data}}
# Debian's Python has scikit-learn; the pyenv python3 first on PATH does not.
python=/usr/bin/python3

mkdir -p "$out"
status=0
for dataset in routerbench3 llmrouter14; do
    if [ ! -d "$data_root/$dataset" ]; then
        echo "skipping $dataset: data folder not found: $data_root/$dataset" >&2
        status=1
        continue
    fi
    for router in knn ridge; do
        "$python" "$here/sklearn_peers.py" --data "$data_root/$dataset" \
            --router "$router" \
            --out "$out/$dataset-sklearn-$router.json" \
            --predictions "$out/$dataset-sklearn-$router.csv"
    done
    "$python" "$here/tuned_peers.py" --data "$data_root/$dataset" --out-dir "$out"
done
exit $status
