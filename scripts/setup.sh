#!/usr/bin/env bash
# Create .venv at the repository root and install the factory into it.
#   bash scripts/setup.sh          # the factory (CPU build of torch)
#   bash scripts/setup.sh --dev    # plus what the tests need
#   FACTORY_TORCH=cuda bash scripts/setup.sh   # GPU machines: torch from PyPI with CUDA
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --bench) extras="[dev,bench]" ;;
    *) echo "setup.sh: unknown option $arg (use --dev or --bench)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip

constraints=(-c constraints-cpu.txt)
if [ "${FACTORY_TORCH:-cpu}" = "cuda" ]; then
  constraints=()
fi
# torch first, pinned, so that no other requirement can pull a different build.
if [ "${FACTORY_TORCH:-cpu}" = "cpu" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${constraints[@]}" "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${constraints[@]}" -e ".${extras}"
.venv/bin/python -c "import torch, transformers, factory; print(f'factory {factory.__version__}: torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}')"
