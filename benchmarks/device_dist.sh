#!/usr/bin/env bash
# Recorded-figure script (it made benchmarks/results/dist_h200x2*), for a machine with 2+ GPUs and no package index: demo configs trained with tools/dist_train.sh (torchrun, DDP, one process per
# GPU) and evaluated with tools/dist_test.sh, to check the multi-GPU path end to end.
#   TASKS="cls det seg" GPUS=2 bash benchmarks/device_dist.sh     (TASKS=cls by default; logs under $OUT)
# cls: the shapes classifier; det: Mask R-CNN on the demo scenes (bbox/segm mAP); seg: UperNet on them (mIoU).
# det and seg need mmcv with CUDA ops (MMCV_OPS=1 below: a carried build from benchmarks/device_det.sh, or built).
# No `set -e`: every step runs even when an earlier one fails, and failures are reported in the log.
set -uo pipefail
TASKS=${TASKS:-cls}
case " $TASKS " in *" det "*|*" seg "*) export MMCV_OPS=1 ;; esac
source benchmarks/device_env.sh
GPUS=${GPUS:-2}
scenes=/tmp/kat_demo_scenes
for task in $TASKS; do
  wd=/tmp/wd_dist_${task}_$(date +%s)
  case $task in
    cls) config=configs/kat/demo/kat_demo_shapes.py; ckpt=epoch_4.pth
         opts=(train_cfg.max_epochs=4 train_cfg.val_interval=2); test_opts=() ;;
    det) config=configs/kat/demo/mask_rcnn_kat_demo.py; ckpt=epoch_4.pth
         data=(train_dataloader.dataset.data_root=$scenes/ val_dataloader.dataset.data_root=$scenes/
               test_dataloader.dataset.data_root=$scenes/ val_evaluator.ann_file=$scenes/annotations/instances_val.json
               test_evaluator.ann_file=$scenes/annotations/instances_val.json)
         opts=("${data[@]}" train_dataloader.batch_size=4); test_opts=("${data[@]}") ;;
    seg) config=configs/kat/demo/upernet_kat_demo.py; ckpt=iter_400.pth
         data=(train_dataloader.dataset.data_root=$scenes/ val_dataloader.dataset.data_root=$scenes/
               test_dataloader.dataset.data_root=$scenes/)
         opts=("${data[@]}" train_cfg.max_iters=400 param_scheduler.1.end=400 train_cfg.val_interval=400)
         test_opts=("${data[@]}") ;;
    *) echo "unknown task $task (cls, det, seg)"; exit 2 ;;
  esac
  if [ "$task" != cls ]; then
    [ -d $scenes/annotations ] || python3 tools/data/make_demo_scenes.py --out $scenes || exit 1
  fi
  start=$(date +%s)
  PYTHON=python3 bash tools/dist_train.sh $config "$GPUS" --work-dir "$wd" --cfg-options "${opts[@]}" \
    > "$OUT/${task}_dist_train.log" 2>&1
  echo "== $task: dist_train rc=$? wall_s=$(( $(date +%s) - start ))"
  grep -E "Distributed training|GPU number" "$OUT/${task}_dist_train.log" | head -2 | cut -c1-150
  grep -E "Epoch\(val\)|Iter\(val\)|copypaste" "$OUT/${task}_dist_train.log" | tail -4 | cut -c1-220
  PYTHON=python3 bash tools/dist_test.sh $config "$wd/$ckpt" "$GPUS" --work-dir "$wd" \
    ${test_opts[@]:+--cfg-options "${test_opts[@]}"} > "$OUT/${task}_dist_test.log" 2>&1
  echo "== $task: dist_test rc=$?"
  grep -E "Epoch\(test\)|Iter\(test\)|copypaste" "$OUT/${task}_dist_test.log" | tail -3 | cut -c1-220
done
