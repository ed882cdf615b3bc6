#!/usr/bin/env bash
# Run a recipe in the factory container on this machine's GPUs.
#   containers/run-local.sh recipes/smollm2-minitron.yaml [key=value ...]
# Artifacts land in ./runs and downloads in ./.factory-cache, both on the host.
set -euo pipefail
image=${FACTORY_IMAGE:-minitron-factory}
recipe=${1:?usage: run-local.sh RECIPE [key=value ...]}
shift
mkdir -p runs .factory-cache
exec docker run --gpus all --rm --ipc=host \
  -v "$PWD/runs:/workspace/factory/runs" \
  -v "$PWD/.factory-cache:/workspace/cache" \
  -v "$PWD/recipes:/workspace/factory/recipes:ro" \
  "$image" factory run "$recipe" "$@"
