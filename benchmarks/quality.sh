#!/usr/bin/env bash
# Trains and evaluates torouter's routers (the one default that
# `torouter train` chooses by cross-validation, and each scorer as named:
# gbt, linear, task, MLP with both losses, kNN, transformer-lite; every one calibrated on
# 5 held-out folds of the training split) and the Python peers on both
# shared datasets, then writes docs/RESULTS.md and the plots under docs/plots/.
#
#   benchmarks/quality.sh            # about 30 minutes on 2 cores, plus about
#                                    # 6 for the peers (benchmarks/peers/check_peers.sh),
#                                    # 4 for the paired bootstrap, 14 for the
#                                    # default trained with three more seeds and
#                                    # 5 for the XGBoost peer with them
#
# Needs the shared datasets ($TOROUTER_DATA, default ../shared/data) and,
# for the peers, Debian's python3-sklearn, python3-xgboost and PyTorch
# (`scripts/setup peers`).
set -euo pipefail
cd "$(dirname "$0")/.."
data_root="${TOROUTER_DATA:-../shared/data}"
[ -d "$data_root" ] || { echo "benchmarks/quality.sh: no datasets at $data_root (set TOROUTER_DATA)" >&2; exit 1; }
out=build/quality
mkdir -p "$out" docs/plots
scripts/build >/dev/null

# name | scorer spec (none: the default choice) | training options.
# Seed 1 and 2 threads throughout.
routers=(
  "default||"
  "gbt|gbt|"
  "linear|linear|"
  "task|task|"
  "mlp-bce|mlp:64,buckets=16384|--loss bce"
  "mlp-soft|mlp:64,buckets=16384|--loss soft --temperature 0.1"
  "mlp-soft-int8|mlp:64,buckets=16384,table=int8|--loss soft --temperature 0.1"
  "knn|knn:40|"
  "knn-dense|knn:40,dims=32|"
  "tlite-soft|tlite|--loss soft --temperature 0.1"
)
for dataset in routerbench3 llmrouter14; do
  for entry in "${routers[@]}"; do
    IFS='|' read -r name spec options <<<"$entry"
    model="$out/$dataset-$name.tormodel"
    echo "== $dataset: $name ($spec $options)"
    # shellcheck disable=SC2086
    # The default's selection also writes every candidate's out-of-fold
    # predictions, for compare_oof.py below.
    [ -n "$spec" ] || options="--out-of-fold $out/$dataset-oof.csv"
    build/bin/torouter train --data "$data_root/$dataset" ${spec:+--scorer "$spec"} $options \
      --seed 1 --threads 2 --out "$model" 2>"$out/$dataset-$name.train.log" | tail -1
    build/bin/torouter eval --data "$data_root/$dataset" --model "$model" \
      --json "$out/$dataset-$name.json" --plot "docs/plots/$dataset-$name.svg" \
      --predictions "$out/$dataset-$name.csv" | grep AIQ
  done
done
# The default again with other seeds (the folds, the projections and the
# networks' starts all follow the seed), judged on the test split as above:
# how much of a difference between routers a seed alone makes. The seeds
# are write_results.py's SEEDS.
for dataset in routerbench3 llmrouter14; do
  for seed in 2 3 4; do
    echo "== $dataset: the default with seed $seed"
    model="$out/$dataset-default-seed$seed.tormodel"
    build/bin/torouter train --data "$data_root/$dataset" --seed "$seed" --threads 2 \
      --out "$model" 2>"$out/$dataset-default-seed$seed.train.log" | tail -1
    build/bin/torouter eval --data "$data_root/$dataset" --model "$model" \
      --json "$out/$dataset-default-seed$seed.json" | grep AIQ
  done
done
# The ablation: each variant's 5-fold cross-validated figures on the
# training split alone (the test split is not read), as `torouter train`
# prints them; write_results.py puts them in a table.
ablation="gbt;gbt,dims=64;gbt,dims=128;gbt,depth=2;gbt,depth=6;gbt,eta=0.1;gbt,leaf=1"
ablation+=";gbt,refit=0;gbt,buckets=65536;mlp:64,buckets=16384;mlp:64,buckets=16384/soft;knn:40"
ablation+=";knn:40,dims=32;knn:40,dims=64"
# The linear family (issue 15, item 1): ridge per expert on the sparse
# features, at other penalties and with each expert's chosen on held-out
# rows, with more buckets, and with words and characters in blocks of
# their own.
ablation+=";linear;linear,alpha=3;linear,alpha=30;linear,alpha=auto;linear,buckets=65536"
ablation+=";linear,blocks=2"
# The task scorer (which training task a prompt belongs to, and the task's
# mean quality per expert) at other penalties and with blocks.
ablation+=";task;task,alpha=0.3;task,alpha=3;task,alpha=10;task,alpha=auto;task,blocks=2"
# Words and characters in blocks of their own (as the peers' two TF-IDF
# blocks), at the default width and with more buckets for the two halves.
ablation+=";gbt,blocks=2;gbt,buckets=32768,blocks=2;gbt,buckets=65536,blocks=2"
ablation+=";knn:40,dims=32,blocks=2;knn:40,dims=32,buckets=32768,blocks=2"
for dataset in routerbench3 llmrouter14; do
  echo "== $dataset: ablation by cross-validation on the training split"
  build/bin/torouter train --data "$data_root/$dataset" --candidates "$ablation" --stacks 0 \
    --seed 1 --threads 2 --out "$out/$dataset-ablation.tormodel" 2>"$out/$dataset-ablation.log" | tail -1
done
# The default's choice again with isotonic instead of linear calibration,
# to compare the two methods on the same cross-validation.
for dataset in routerbench3 llmrouter14; do
  echo "== $dataset: the default's candidates, calibrated by isotonic regression"
  build/bin/torouter train --data "$data_root/$dataset" --calibration isotonic \
    --seed 1 --threads 2 --out "$out/$dataset-isotonic.tormodel" 2>"$out/$dataset-isotonic.log" | tail -1
done
# The default's candidates against the XGBoost peer on the same folds of the
# training split, judged with one cost prediction (benchmarks/peers/README.md).
for dataset in routerbench3 llmrouter14; do
  echo "== $dataset: out-of-fold predictions against XGBoost on the same folds"
  /usr/bin/python3 benchmarks/peers/compare_oof.py --data "$data_root/$dataset" \
    --oof "$out/$dataset-oof.csv" --out "$out/$dataset-compare-oof.json"
done
benchmarks/peers/check_peers.sh "$out/peers" "$data_root"
# The XGBoost peer with the default's other seeds (write_results.py's SEEDS):
# how much of its lead on llmrouter14's test split a seed alone moves.
for seed in 2 3 4; do
  echo "== llmrouter14: the XGBoost peer with seed $seed"
  /usr/bin/python3 benchmarks/peers/tuned_peers.py --data "$data_root/llmrouter14" \
    --out-dir "$out/peers" --peers xgb --seed "$seed" | grep "xgb-seed$seed:"
done
# How sure each test split is of the default against each tuned peer: a
# paired bootstrap of the test rows, one cost prediction for all.
for dataset in routerbench3 llmrouter14; do
  echo "== $dataset: paired bootstrap of the test split, the default against the tuned peers"
  peers=()
  for peer in xgb ridge-cv knn-cv mf; do peers+=(--peer "$peer=$out/peers/$dataset-$peer.csv"); done
  /usr/bin/python3 benchmarks/peers/paired_bootstrap.py --data "$data_root/$dataset" \
    --ours "default=$out/$dataset-default.csv" "${peers[@]}" --resamples 200 \
    --out "$out/$dataset-bootstrap.json"
done
# (Into a file first: write_results.py carries over the closed-loop section
# of the docs/RESULTS.md it replaces.)
/usr/bin/python3 benchmarks/write_results.py "$out" "$data_root" > "$out/RESULTS.md"
mv "$out/RESULTS.md" docs/RESULTS.md
echo "wrote docs/RESULTS.md"
