#!/usr/bin/env bash
# The first command to run on a machine with a GPU, in each of the two images (a few minutes):
#   factory run recipes/paper/mn-minitron-8b.yaml --dry-run          # writes the job specs, no GPU
#   docker run --gpus all --rm -v $PWD/runs:/runs minitron-factory-nemo \
#       bash containers/gpu-check.sh /runs/*/.nemo/*/config.yaml
#   docker run --gpus all --rm -v $PWD/runs:/runs minitron-factory-aligner \
#       bash containers/gpu-check.sh /runs/*/.nemo/*/config.yaml
# It prints, in this order:
# 1. the image's NeMo, ModelOpt, Megatron-Core (or NeMo-Aligner), torch, Transformer Engine and
#    CUDA versions, and one ok/FAIL line against the pins of containers/nemo_stack.py;
# 2. one ok/FAIL/skip line per stage kind the image runs (correct, prune, distill in the nemo
#    image; sft, dpo in the aligner image): every NeMo / NeMo-Aligner script the given job specs
#    call answers --help (it imports, and its argument parser builds); each Aligner job's Hydra
#    overrides compose onto the image's own examples/nlp/gpt/conf/*.yaml; on the prune line, a
#    tiny Llama goes HF -> NeMo -> llm.prune(drop_layers) -> HF and must equal the HF model with
#    those layers removed (GPU_CHECK_TINY=0 skips it).
# Exit status 1 if any line says FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python containers/gpu_check.py "$@"
