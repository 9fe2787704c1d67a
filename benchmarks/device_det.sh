#!/usr/bin/env bash
# Recorded-figure script (it made benchmarks/results/det_h200), for a GPU machine without a package index: mmcv with CUDA ops (built, or unpacked from a carried build), then
#  1. KAT-S Mask R-CNN against its GELU-MLP twin (a plain ViT-S) at 1024 px, the full ViTDet detector and its
#     AMP optimizer wrapper, synthetic batches (tools/benchmark_config.py): iterations/s, images/s, peak memory;
#  2. a short real training of the demo detector on the demo scenes (tools/train.py) with bbox/segm mAP.
# Carried: .whl (OpenMMLab wheels, mmcv sdist or a built mmcv_ops_*.tgz.part-*).
#   bash benchmarks/device_det.sh          (results under $OUT, or work_dirs/device; SKIP_BENCH=1: the demo only)
# No `set -e`: every step runs even when an earlier one fails, and failures are reported in the log.
set -uo pipefail
BATCH=${BATCH:-4}
DEMO_EPOCHS=${DEMO_EPOCHS:-16}
DEMO_BATCH=${DEMO_BATCH:-8}
DEMO_LIMIT=${DEMO_LIMIT:-210}
MMCV_OPS=1 source benchmarks/device_env.sh
logs=/tmp/det_logs_$(date +%s) && mkdir -p $logs

[ -n "${SKIP_BENCH:-}" ] || python3 tools/benchmark_config.py configs/kat/mask_rcnn_kat_s.py --batch-size $BATCH --steps 20 --warmup 5 \
  --out "$OUT/mask_rcnn_kat_s_h200.json" 2>&1 | grep -E "it/s|^\||^mask_rcnn|wrote|Error|error" | tee $logs/benchmark_det.log

[ -d /tmp/kat_demo_scenes/annotations ] || python3 tools/data/make_demo_scenes.py --out /tmp/kat_demo_scenes || exit 1
stamp=$(date +%s)  # a fresh work dir: tools/train.py refuses to train over earlier checkpoints
start=$(date +%s)
timeout "$DEMO_LIMIT" python3 tools/train.py configs/kat/demo/mask_rcnn_kat_demo.py --work-dir /tmp/wd_det_$stamp \
  --cfg-options train_dataloader.dataset.data_root=/tmp/kat_demo_scenes/ train_dataloader.batch_size=$DEMO_BATCH \
  val_dataloader.dataset.data_root=/tmp/kat_demo_scenes/ \
  val_evaluator.ann_file=/tmp/kat_demo_scenes/annotations/instances_val.json \
  train_cfg.max_epochs=$DEMO_EPOCHS param_scheduler.1.end=$DEMO_EPOCHS train_cfg.val_interval=$(( DEMO_EPOCHS / 4 )) \
  default_hooks.checkpoint.interval=$DEMO_EPOCHS default_hooks.logger.interval=10 > $logs/demo_train.log 2>&1
echo "rc=$? wall_s=$(( $(date +%s) - start ))" > $logs/demo_done.txt
echo "== demo: $(cat $logs/demo_done.txt)"
grep -E "Epoch\(train\)" $logs/demo_train.log | sed -n "1p;\$p" | cut -c1-330
grep -E "coco/bbox_mAP:|bbox_mAP_copypaste|segm_mAP_copypaste|Epoch\(val\)" $logs/demo_train.log | cut -c1-300
cp /tmp/wd_det_$stamp/*/vis_data/scalars.json $logs/demo_scalars.json 2>/dev/null
tar czf "$OUT/det_logs.tar.gz" -C $logs .
ls -la "$OUT"
