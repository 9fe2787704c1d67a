#!/usr/bin/env bash
# On a lent machine with 2+ GPUs: the demo config trained with tools/dist_train.sh (torchrun, DDP, one process
# per GPU) and evaluated with tools/dist_test.sh, to check the multi-GPU path end to end.
#   bash benchmarks/device_dist.sh            (GPUS=2 by default; logs under $OUT)
set -uo pipefail
source benchmarks/device_env.sh
GPUS=${GPUS:-2}
wd=/tmp/wd_dist_$(date +%s)
PYTHON=python3 bash tools/dist_train.sh configs/kat/demo/kat_demo_shapes.py "$GPUS" --work-dir "$wd" \
  --cfg-options train_cfg.max_epochs=4 train_cfg.val_interval=2 > "$OUT/dist_train.log" 2>&1
echo "dist_train rc=$?"
grep -E "Distributed launcher|world_size|Epoch\(val\)" "$OUT/dist_train.log" | head -8
ckpt=$(ls "$wd"/epoch_4.pth 2>/dev/null)
PYTHON=python3 bash tools/dist_test.sh configs/kat/demo/kat_demo_shapes.py "$ckpt" "$GPUS" --work-dir "$wd" \
  > "$OUT/dist_test.log" 2>&1
echo "dist_test rc=$?"
grep -E "Epoch\(test\)" "$OUT/dist_test.log" | tail -2
