#!/usr/bin/env bash
# Train on GPUS processes of this machine (or of NNODES machines) with torchrun.
#
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py options...]
#
# Environment: NNODES (default 1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
# PYTHON (default: the repository's .venv/bin/python when present, else python).
# Example, 2 machines of 8 GPUs:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8   # on the first
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8   # on the second
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: bash $0 CONFIG GPUS [tools/train.py options...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
# tools/dist_test.sh reuses this launcher with MMKAT_DIST_ENTRY=test.py and the checkpoint as the 3rd argument
ENTRY=${MMKAT_DIST_ENTRY:-train.py}
POSITIONAL=("$CONFIG")
if [ "$ENTRY" = test.py ]; then POSITIONAL+=("$1"); shift; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" \
    "$ROOT/tools/$ENTRY" "${POSITIONAL[@]}" --launcher pytorch "$@"
