#!/usr/bin/env bash
# Repeated Fashion-MNIST runs: every CONFIG with every seed, through tools/train.py, PARALLEL runs at a time.
# Each run gets its own work dir OUT/<config name>_seed<S> (a run whose work dir exists is skipped) and a
# wall.txt there with its exit status and wall time; OUT/command.txt gets the command line (one line per
# invocation), which tools/summarize_cls_runs.py --out records with the table; it also makes the plot.
#   SEEDS="0 1 2" PARALLEL=2 THREADS=1 bash benchmarks/fmnist_seeds.sh OUT CONFIG... [-- TRAIN_ARGS...]
# TRAIN_ARGS follow `--cfg-options randomness.seed=S` (more key=value pairs, then flags such as --amp);
# TIME_LIMIT=SECONDS stops a run that takes longer (its wall.txt then says rc=124).
# e.g. the CPU pair:  bash benchmarks/fmnist_seeds.sh work_dirs/fmnist_cpu configs/kat/fashion_mnist/{kat,vit}_mini_fmnist.py
#      on a GPU:      PARALLEL=9 bash benchmarks/fmnist_seeds.sh OUT configs/kat/fashion_mnist/{kat,vit,kat_t_vp}*_t*_fmnist.py -- --amp
# Data: data/fashion_mnist (python tools/data/fashion_mnist.py). PYTHON defaults to .venv/bin/python, else python3.
set -uo pipefail
# The body is one compound command: bash reads it whole before running, so editing this file while it
# runs cannot make the running script read shifted lines.
{
out=${1:?usage: fmnist_seeds.sh OUT CONFIG... [-- TRAIN_ARGS...]}
shift
configs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do configs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
train_args=("$@")
[ ${#configs[@]} -gt 0 ] || { echo "fmnist_seeds.sh: no CONFIG given" >&2; exit 2; }
for c in "${configs[@]}"; do [ -f "$c" ] || { echo "fmnist_seeds.sh: no such config: $c" >&2; exit 2; }; done
SEEDS=${SEEDS:-0 1 2}
PARALLEL=${PARALLEL:-2}
THREADS=${THREADS:-1}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$out"
{ printf 'SEEDS="%s" PARALLEL=%s THREADS=%s %sbash benchmarks/fmnist_seeds.sh' "$SEEDS" "$PARALLEL" "$THREADS" \
    "${TIME_LIMIT:+TIME_LIMIT=$TIME_LIMIT }"
  printf ' %q' "$out" "${configs[@]}"
  [ ${#train_args[@]} -eq 0 ] || { printf ' --'; printf ' %q' "${train_args[@]}"; }
  echo; } >> "$out/command.txt"

run_one() {  # config seed
  local name dir start rc
  name=$(basename "$1" .py)_seed$2
  dir=$out/$name
  if [ -e "$dir" ] || [ -e "$out/$name.log" ]; then  # an earlier run's results are never replaced
    echo "$name: skipped, $dir (or its log) exists already; choose another OUT"
    return
  fi
  start=$(date +%s)
  OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS ${TIME_LIMIT:+timeout $TIME_LIMIT} "$PYTHON" tools/train.py "$1" --work-dir "$dir" \
    --cfg-options randomness.seed="$2" "${train_args[@]}" > "$out/$name.log" 2>&1
  rc=$?
  echo "rc=$rc wall_s=$(( $(date +%s) - start )) config=$1 seed=$2" 2>/dev/null > "$dir/wall.txt" ||
    echo "rc=$rc wall_s=$(( $(date +%s) - start )) config=$1 seed=$2 (no work dir)" > "$out/$name.wall.txt"
  echo "$name: $(cat "$dir/wall.txt" 2>/dev/null)"
}

running=0
for seed in $SEEDS; do
  for config in "${configs[@]}"; do
    run_one "$config" "$seed" &
    running=$((running + 1))
    if [ "$running" -ge "$PARALLEL" ]; then wait -n; running=$((running - 1)); fi
  done
done
wait
exit
}
