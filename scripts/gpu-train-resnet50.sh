#!/usr/bin/env bash
# Train ResNet-50-EE on a lent GPU machine (the `device` tool) and send back its weights, the recipe of
# models/resnet50-fmnist/train/COMMAND.md. Two weight decays train side by side (the GPU idles between a batch's
# small kernels); the better *validation* final exit is sent back, as float16 parts (scripts/checkpoint_parts.py).
# Needs: OUT (where results go), Fashion-MNIST's idx files in $MDIEXIT_DATA, a python3 with a CUDA torch, numpy,
# tqdm and msgspec (on the lent machine: msgspec's wheel installed under a folder named in PYTHONPATH).
# BUDGET_S: seconds the training may take; the epoch count is what fits, from a one-epoch probe of both runs.
# MODEL, DEVICE: for a dry run elsewhere (default resnet50, cuda).
set -euo pipefail
: "${OUT:?set OUT}" "${MDIEXIT_DATA:?set MDIEXIT_DATA}"
BUDGET_S=${BUDGET_S:-380} MODEL=${MODEL:-resnet50} DEVICE=${DEVICE:-cuda}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mdiexit() { python3 -c 'import sys; from mdiexit.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
[ "$DEVICE" = cpu ] || nvidia-smi -L
python3 -c 'import torch; print("torch", torch.__version__)'
DECAYS="5e-4 4e-5"
W=$(mktemp -d)
for wd in $DECAYS; do
  mdiexit train --model $MODEL --epochs 1 --weight-decay "$wd" --seed 0 --device $DEVICE --threads 4 \
      --out "$W/probe-$wd" 2>"$W/probe-$wd.err" &
done
wait
trained() { for r in "$@"; do [ -f "$W/$r/model.pt" ] || { tail -5 "$W/$r.err"; exit 1; }; done; }
trained $(for wd in $DECAYS; do echo "probe-$wd"; done)
t=$(for wd in $DECAYS; do grep -o 'epoch 1/1 [0-9]*s' "$W/probe-$wd/train.log" | grep -o '[0-9]*s$' | tr -d s; done |
    sort -n | tail -1)
EPOCHS=$(( BUDGET_S / (t + 1) )); EPOCHS=$(( EPOCHS > 40 ? 40 : EPOCHS < 1 ? 1 : EPOCHS ))
echo "probe: ${t}s an epoch with both runs side by side -> $EPOCHS epochs"
for wd in $DECAYS; do
  echo "mdiexit train --model $MODEL --dataset fashion-mnist --epochs $EPOCHS --weight-decay $wd --seed 0" \
       "--device $DEVICE --threads 4 --out $W/wd$wd"
  mdiexit train --model $MODEL --dataset fashion-mnist --epochs "$EPOCHS" --weight-decay "$wd" --seed 0 \
      --device $DEVICE --threads 4 --out "$W/wd$wd" 2>"$W/wd$wd.err" &
done
wait
trained $(for wd in $DECAYS; do echo "wd$wd"; done)
best="" best_acc=0
for wd in $DECAYS; do
  cp "$W/wd$wd/train.log" "$OUT/train-wd$wd.log"
  acc=$(grep -o 'val acc per exit .*' "$W/wd$wd/train.log" | tail -1 | awk '{print $NF}')
  echo "weight decay $wd: validation final exit $acc"
  if python3 -c "import sys; sys.exit(0 if $acc > $best_acc else 1)"; then best=$wd best_acc=$acc; fi
done
echo "sending back weight decay $best (validation final exit $best_acc)" | tee "$OUT/chosen.txt"
python3 scripts/checkpoint_parts.py split "$W/wd$best/model.pt" "$OUT/parts" --half --max-mb 15.9
