#!/usr/bin/env bash
# Test a checkpoint on GPUS processes of this machine (or of NNODES machines) with torchrun.
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options...]
#
# Environment as for tools/dist_train.sh (NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON), whose launcher it uses.
set -euo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: bash $0 CONFIG CHECKPOINT GPUS [tools/test.py options...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
MMKAT_DIST_ENTRY=test.py exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_train.sh" "$CONFIG" "$GPUS" "$CHECKPOINT" "$@"
