#!/usr/bin/env bash
# Recorded-figure script (it made benchmarks/results/fmnist_h200_seeds): on one GPU, KAT-T, ViT-T and KAT-T
# with the variance-preserving init on Fashion-MNIST, seeds 0 1 2 each, all nine runs at once through
# benchmarks/fmnist_seeds.sh (tools/train.py --amp, bf16), then the table and curves with
# tools/summarize_cls_runs.py. For a GPU machine without a package index: carried are .whl (mmengine,
# mmpretrain, mmcv-lite and their pure-Python needs, see device_env.sh) and .device/fmnist (the four .gz
# files of Debian's dataset-fashion-mnist). Results go to $OUT (default work_dirs/device).
#   EPOCHS=40 bash benchmarks/device_fmnist.sh
# EPOCHS=auto (the default) first times 20 steps of the nine runs side by side and then takes the longest
# schedule (a multiple of 5 epochs, at most 60) that ends within BUDGET seconds of the script's start
# (default 540); the epoch count used is printed and stored in commands.txt. The estimate is optimistic: in
# the recorded runs a probe's 0.27 s/step became 0.39 s/step over whole epochs, so give EPOCHS for a run that
# has to finish. $OUT gets curves.png and
# results.tar.gz (table.md, table.json, the logs, runs.tar.gz with every run's work dir but the checkpoints).
set -uo pipefail
t_start=$(date +%s)
BUDGET=${BUDGET:-540}
EPOCHS=${EPOCHS:-auto}
source benchmarks/device_env.sh
python3 tools/data/fashion_mnist.py --src .device/fmnist --out data/fashion_mnist | tail -1 || exit 1
python3 -m pytest -q -p no:logging tests/test_datasets/test_tensor_dataset.py > "$OUT/pytest_data.log" 2>&1 \
  || { tail -30 "$OUT/pytest_data.log"; exit 1; }
tail -1 "$OUT/pytest_data.log"

configs=(configs/kat/fashion_mnist/kat_t_fmnist.py configs/kat/fashion_mnist/vit_t_fmnist.py
         configs/kat/fashion_mnist/kat_t_vp_fmnist.py)
common=(optim_wrapper.dtype=bfloat16)
batch=$(python3 -c "from mmengine.config import Config; print(Config.fromfile('${configs[0]}').train_dataloader.batch_size)" 2>/dev/null)
if [ "$EPOCHS" = auto ]; then
  probe=/tmp/fmnist_probe_$t_start
  PARALLEL=9 SEEDS="0 1 2" bash benchmarks/fmnist_seeds.sh $probe "${configs[@]}" -- "${common[@]}" \
    train_cfg.max_epochs=1 train_dataloader.dataset.indices=$((20 * batch)) default_hooks.logger.interval=5 --amp \
    > "$OUT/probe.log" 2>&1
  EPOCHS=$(python3 - "$probe" "$t_start" "$BUDGET" "$batch" <<'PY'
import glob, json, math, statistics, sys, time
probe, t_start, budget, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps, vals, starts = [], [], []
for run in glob.glob(f'{probe}/*_seed*/'):
    entries = [json.loads(l) for f in glob.glob(f'{run}*/vis_data/scalars.json') for l in open(f) if l.strip()]
    train = [e['time'] for e in entries if 'loss' in e and 'time' in e][1:]  # the first window holds warm-up
    val = [e['time'] for e in entries if 'accuracy/top1' in e and 'time' in e]
    wall = dict(kv.split('=', 1) for kv in open(f'{run}wall.txt').read().split() if '=' in kv)
    if not train or not val or wall.get('rc') != '0':
        sys.exit(f'probe run {run} did not finish; see probe.log')
    steps.append(statistics.median(train)); vals.append(val[-1] * 20)
    starts.append(float(wall['wall_s']) - 20 * steps[-1] - vals[-1])
step, val, start = max(steps), max(vals), max(starts)
per_epoch = math.ceil(60000 / batch) * step + val  # and 10,000 / 500 for validation
left = t_start + budget - time.time() - start - 40  # 40 s for the summary and the copies
epochs = max(5, min(60, int(left / per_epoch) // 5 * 5))
print(f'probe: {step * 1e3:.1f} ms/step, validation {val:.1f} s, start-up {start:.0f} s, '
      f'{per_epoch:.1f} s/epoch with nine runs at once; {left:.0f} s left -> {epochs} epochs', file=sys.stderr)
print(epochs)
PY
) || { tail -20 "$OUT/probe.log"; exit 1; }
fi
left=$(( t_start + BUDGET - $(date +%s) ))
runs=/tmp/fmnist_runs_$t_start
args=("${common[@]}" train_cfg.max_epochs=$EPOCHS param_scheduler.1.end=$EPOCHS --amp)
{ echo "EPOCHS=$EPOCHS (time limit per run $left s)"
  echo "PARALLEL=9 SEEDS=\"0 1 2\" bash benchmarks/fmnist_seeds.sh RUNS ${configs[*]} -- ${args[*]}"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__)'; } | tee "$OUT/commands.txt"
PARALLEL=9 SEEDS="0 1 2" TIME_LIMIT=$left bash benchmarks/fmnist_seeds.sh $runs "${configs[@]}" -- "${args[@]}" \
  2>&1 | tee "$OUT/runs.log"

res=$OUT/results && mkdir -p $res && mv "$OUT"/*.log "$OUT/commands.txt" $res/ 2>/dev/null
python3 tools/summarize_cls_runs.py "KAT-T=$runs/kat_t_fmnist_seed*" "ViT-T=$runs/vit_t_fmnist_seed*" \
  "KAT-T (variance-preserving init)=$runs/kat_t_vp_fmnist_seed*" --per-epoch --out $res/table.json \
  --plot "$OUT/curves.png" --title "Fashion-MNIST, $EPOCHS epochs, 3 seeds (mean, range shaded)" \
  > $res/table.md 2> $res/summary_errors.txt
cat $res/table.md $res/summary_errors.txt

# the logs, the configs as run, the scalars and wall times (no checkpoints), and KAT-T seed 0's rationals
( cd $runs && tar czf $res/runs.tar.gz --exclude='*.pth' --exclude=last_checkpoint . )
best=$(ls $runs/kat_t_fmnist_seed0/best_*.pth 2>/dev/null | head -1)
if [ -n "$best" ]; then
  python3 - "$best" $res/kat_t_fmnist_rationals.pth <<'PY'
import sys, torch
import mmkat  # noqa: F401  (allow-lists mmengine's checkpoint types for weights_only loading)
ckpt = torch.load(sys.argv[1], map_location='cpu')
keep = {k: v for k, v in ckpt['state_dict'].items() if '.act1.' in k or '.act2.' in k}
torch.save(dict(state_dict=keep, meta=dict(source=sys.argv[1].split('/')[-1])), sys.argv[2])
print('rationals:', len(keep), 'tensors from', sys.argv[1])
PY
fi
tar czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf $res
echo "total: $(( $(date +%s) - t_start )) s"
ls -la "$OUT"
