#!/usr/bin/env bash
# Recorded-figure script (it made benchmarks/results/fmnist_h200), for a GPU machine without a package index: build mmkat._C with CUDA, run the CUDA tests, time KAT against the same-size ViT
# in training (tools/benchmark.py), then train KAT-T and its GELU ViT twin on Fashion-MNIST (both at
# once on the one GPU, same recipe and seed) and evaluate them.
# Carried: .whl (OpenMMLab wheels incl. mmcv-lite) and .device/fmnist (Debian's dataset-fashion-mnist files).
#   bash benchmarks/device_cls.sh            (results under $OUT, or work_dirs/device)
# No `set -e`: every step runs even when an earlier one fails, and failures are reported in the log.
set -uo pipefail
EPOCHS=${EPOCHS:-30}
TRAIN_LIMIT=${TRAIN_LIMIT:-400}
source benchmarks/device_env.sh
python3 tools/data/fashion_mnist.py --src .device/fmnist --out data/fashion_mnist | tail -3 || exit 1

[ -n "${SKIP_TESTS:-}" ] || python3 -m pytest -q tests/test_ops/test_group_rational_cuda.py tests/test_models -m cuda > "$OUT/pytest_cuda.log" 2>&1
tail -3 "$OUT/pytest_cuda.log"

[ -n "${SKIP_BENCH:-}" ] || python3 tools/benchmark.py --archs tiny small base --modes train --compile eager \
  --out "$OUT/train_h200.json" 2>&1 | grep -v -i warn | tee "$OUT/benchmark_train.log"

stamp=$(date +%s)  # fresh work dirs: tools/train.py refuses to train over earlier checkpoints
logs=/tmp/fmnist_logs_$stamp && mkdir -p $logs
for model in kat vit; do
  ( start=$(date +%s)
    timeout "$TRAIN_LIMIT" python3 tools/train.py configs/kat/fashion_mnist/${model}_t_fmnist.py --amp \
      --work-dir /tmp/wd_${model}_$stamp --cfg-options optim_wrapper.dtype=bfloat16 train_cfg.max_epochs=$EPOCHS \
      > $logs/${model}_train.log 2>&1
    echo "rc=$? wall_s=$(( $(date +%s) - start ))" > $logs/${model}_done.txt ) &
done
wait
for model in kat vit; do
  echo "== $model: $(cat $logs/${model}_done.txt)"
  grep -E "Epoch\(val\)" $logs/${model}_train.log | tail -3
  cp /tmp/wd_${model}_$stamp/*/vis_data/scalars.json $logs/${model}_scalars.json 2>/dev/null
done
best=$(ls /tmp/wd_kat_$stamp/best_*.pth 2>/dev/null | head -1)
if [ -n "$best" ]; then
  python3 - "$best" "$OUT/kat_t_fmnist_rationals.pth" <<'PY'
import sys, torch
from mmkat.engine import allow_mmengine_checkpoints
allow_mmengine_checkpoints()
ckpt = torch.load(sys.argv[1], map_location='cpu')
keep = {k: v for k, v in ckpt['state_dict'].items() if '.act1.' in k or '.act2.' in k}
torch.save(dict(state_dict=keep, meta=dict(source=sys.argv[1].split('/')[-1])), sys.argv[2])
print('rationals:', len(keep), 'tensors from', sys.argv[1])
PY
  python3 tools/visualize_rationals.py "$OUT/kat_t_fmnist_rationals.pth" --out "$OUT/kat_t_fmnist_rationals.png" \
    2>&1 | tail -2
fi
tar czf "$OUT/fmnist_logs.tar.gz" -C $logs .
ls -la "$OUT"
