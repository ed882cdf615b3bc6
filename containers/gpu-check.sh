#!/usr/bin/env bash
# The checks that need the NGC image and a GPU, prepared to run in a few minutes:
#   docker run --gpus all --rm -v $PWD/runs:/runs minitron-factory-nemo \
#       bash containers/gpu-check.sh /runs/*/.nemo/*/config.yaml
# 1. versions of NeMo, ModelOpt, Megatron-Core, NeMo-Aligner, torch and CUDA in the image;
# 2. every NeMo-Aligner job spec given (from `factory run ... --dry-run`): its Hydra overrides
#    composed onto the real examples/nlp/gpt/conf/*.yaml of the image (an unknown key fails);
# 3. NeMo 2 end to end on a tiny Llama: HF -> NeMo import, llm.prune with drop_layers (ModelOpt),
#    NeMo -> HF export, and the exported model equals the HF model with those layers removed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python containers/gpu_check.py "$@"
