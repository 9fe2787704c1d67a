#!/usr/bin/env bash
# Train under Slurm: one task per GPU, started by srun.
#
#   bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options...]
#
# Environment: GPUS (total, default 8), GPUS_PER_NODE (default: GPUS, at most 8), CPUS_PER_TASK (5),
# SRUN_ARGS (extra srun options, split on spaces, e.g. "--quotatype=auto --time=2-00:00:00"),
# PORT (the rendezvous port, MASTER_PORT; default mmengine's 29500),
# PYTHON (default: the repository's .venv/bin/python when present, else python).
set -euo pipefail

if [ "$#" -lt 4 ]; then
    echo "usage: bash $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4

GPUS=${GPUS:-8}
if [ -z "${GPUS_PER_NODE:-}" ]; then
    GPUS_PER_NODE=$(( GPUS < 8 ? GPUS : 8 ))
fi
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a EXTRA_SRUN_ARGS <<< "${SRUN_ARGS:-}"
if [ -n "${PORT:-}" ]; then
    export MASTER_PORT=$PORT
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${EXTRA_SRUN_ARGS[@]+"${EXTRA_SRUN_ARGS[@]}"} \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "$@"
