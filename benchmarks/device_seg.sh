#!/usr/bin/env bash
# Recorded-figure script (it made benchmarks/results/seg_h200), for a GPU machine without a package index: mmcv with CUDA ops (unpacked from a carried build, else built), then
#  1. KAT-S UperNet against its GELU-MLP twin (a plain ViT-S) at 512x512, the full config's segmentor and optimizer
#     wrapper, synthetic batches (tools/benchmark_config.py): at the recipe's 2 images per GPU and at 8;
#  2. a short real training of the demo segmentor on the demo scenes (tools/train.py) with mIoU.
# Carried: .whl (OpenMMLab wheels, mmcv_ops_*.tgz.part-* from benchmarks/device_det.sh, or the mmcv sdist).
#   bash benchmarks/device_seg.sh          (results under $OUT, or work_dirs/device; SKIP_BENCH=1: the demo only)
# No `set -e`: every step runs even when an earlier one fails, and failures are reported in the log.
set -uo pipefail
DEMO_ITERS=${DEMO_ITERS:-1600}
DEMO_BATCH=${DEMO_BATCH:-8}
DEMO_LIMIT=${DEMO_LIMIT:-240}
MMCV_OPS=1 source benchmarks/device_env.sh
logs=/tmp/seg_logs_$(date +%s) && mkdir -p $logs

if [ -z "${SKIP_BENCH:-}" ]; then
  for batch in 2 8; do
    python3 tools/benchmark_config.py configs/kat/upernet_kat_s.py --batch-size $batch --steps 20 --warmup 5 \
      --out "$OUT/upernet_kat_s_b${batch}_h200.json" 2>&1 | grep -E "it/s|^\||^upernet|wrote|Error|error" \
      | tee -a $logs/benchmark_seg.log
  done
fi

[ -d /tmp/kat_demo_scenes/annotations ] || python3 tools/data/make_demo_scenes.py --out /tmp/kat_demo_scenes || exit 1
stamp=$(date +%s)  # a fresh work dir: tools/train.py refuses to train over earlier checkpoints
start=$(date +%s)
timeout "$DEMO_LIMIT" python3 tools/train.py configs/kat/demo/upernet_kat_demo.py --work-dir /tmp/wd_seg_$stamp \
  --cfg-options train_dataloader.dataset.data_root=/tmp/kat_demo_scenes/ train_dataloader.batch_size=$DEMO_BATCH \
  val_dataloader.dataset.data_root=/tmp/kat_demo_scenes/ train_cfg.max_iters=$DEMO_ITERS \
  param_scheduler.1.end=$DEMO_ITERS train_cfg.val_interval=$(( DEMO_ITERS / 4 )) \
  default_hooks.checkpoint.interval=$DEMO_ITERS > $logs/demo_train.log 2>&1
echo "rc=$? wall_s=$(( $(date +%s) - start ))" > $logs/demo_done.txt
echo "== demo: $(cat $logs/demo_done.txt)"
grep -E "Iter\(train\)" $logs/demo_train.log | sed -n "1p;\$p" | cut -c1-300
grep -E "Iter\(val\).*mIoU" $logs/demo_train.log | cut -c1-200
cp /tmp/wd_seg_$stamp/*/vis_data/scalars.json $logs/demo_scalars.json 2>/dev/null
tar czf "$OUT/seg_logs.tar.gz" -C $logs .
ls -la "$OUT"
