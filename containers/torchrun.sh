#!/usr/bin/env bash
# Data-parallel run of a recipe on one machine: one process per GPU (or N CPU processes).
#   containers/torchrun.sh 8 recipes/smollm2-minitron.yaml [key=value ...]
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (rendezvous on MASTER_ADDR:29500).
set -euo pipefail
nproc=${1:?usage: torchrun.sh NPROC RECIPE [key=value ...]}
shift
python=${PYTHON:-.venv/bin/python}
if [ "${NNODES:-1}" -gt 1 ]; then
  exec "$python" -m torch.distributed.run --nnodes "$NNODES" --node_rank "${NODE_RANK:?}" \
    --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:?}:29500" --nproc_per_node "$nproc" \
    -m factory.cli run "$@" --no-progress
fi
exec "$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m factory.cli run "$@"
