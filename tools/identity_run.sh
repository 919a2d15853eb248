#!/bin/bash
# The workloads of the bit-identity check (issue 13): the demo, a finetune with --noise-matrix
# estimate and --audit, a seeded tune, and the digits examples in --quick mode.
#   bash tools/identity_run.sh REPO OUTDIR   (then: python tools/identity_compare.py OUT_A OUT_B)
REPO=$1; OUT=$2; rm -rf $OUT; mkdir -p $OUT
cd $REPO

export PYTHONPATH=$REPO OMP_NUM_THREADS=1
PY=${PYTHON:-python}
$PY -m hessaudit demo --cache-dir $OUT/democache --json $OUT/demo.json -q
$PY -m hessaudit finetune --model hessaudit.zoo:digits_cnn --pretrained $(ls $OUT/democache/*/pretrained.safetensors)  --data digits:train --eval-data digits:test --out $OUT/ft --epochs 2 --inject-noise symmetric:0.4 --loss reweight --noise-matrix estimate --radius 2 --head-radius 5 --audit --audit-samples 64 -q || echo FT_FAIL
$PY -m hessaudit tune --model hessaudit.zoo:digits_cnn --pretrained $(ls $OUT/democache/*/pretrained.safetensors) --data digits:train --out $OUT/tune --epochs 2 --trials 3 --inject-noise symmetric:0.4 --loss reweight --noise-matrix symmetric:0.4 -q || echo TUNE_FAIL
$PY examples/noisy_labels/run.py --quick --out $OUT/noisy > $OUT/noisy.txt || echo NOISY_FAIL
$PY examples/measure_vs_gap/run.py --quick --out $OUT/gap > $OUT/gap.txt || echo GAP_FAIL
