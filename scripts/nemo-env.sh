#!/usr/bin/env bash
# Create a separate virtual environment with NVIDIA's LLM stack for checking the
# nemo engine's generated configs against the real classes, without a GPU.
#   bash scripts/nemo-env.sh              # creates .venv-nemo (or $NEMO_VENV)
#   make nemo-check                       # then runs tests/nemo_env in it
# Never the project's .venv: nemo-toolkit[llm]==2.7.3 pins transformers~=4.57,
# numpy<2, omegaconf<=2.3 and nvidia-modelopt==0.37.0, all of which clash with it.
# NeMo-Aligner 0.7.0 is not installed (it needs NeMo 2.4's NLP collection, gone
# from 2.7): its wheel is fetched without dependencies and unpacked, so the tests
# can read which config keys its code reads. (Neither its wheel nor its sdist
# ships examples/nlp/gpt/conf/*.yaml; those are checked inside the NGC image by
# containers/gpu-check.sh.)
# Every package is pinned by scripts/nemo-env.lock (pip freeze of a working env;
# megatron-core 0.15.3: 0.16 lacks dist_checkpointing.strategies.tensorstore, so
# NeMo 2.7.3 cannot save a checkpoint). NeMo's scripts/ (checkpoint converters,
# preprocessing) ship in none of its packages: a sparse checkout of the same tag
# goes to $venv/share/nemo-src when github.com is reachable (NEMO_SRC elsewhere).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${NEMO_VENV:-$root/.venv-nemo}
python=${PYTHON:-python3}
nemo_version=${NEMO_VERSION:-2.7.3}
aligner_version=${ALIGNER_VERSION:-0.7.0}
torch_version=${NEMO_TORCH:-2.13.0}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip

# torch first and pinned: the CPU build where one is offered (set PIP_EXTRA_INDEX_URL
# to https://download.pytorch.org/whl/cpu elsewhere), so that nothing pulls a CUDA wheel.
# The other pins keep `from nemo.collections import llm` importable: NeMo pins
# numpy<2, which today's pyarrow (and the datasets that needs it) refuse, and the
# llm collection imports nemo_run, whose newest release needs an older leptonai.
constraints="$venv/constraints.txt"
printf 'torch==%s\nnumpy<2\npyarrow<21\ndatasets<4.1\nleptonai<0.28\nmegatron-core==0.15.3\n' "$torch_version" > "$constraints"
lock=("-c" "$root/scripts/nemo-env.lock")
if [ "$nemo_version" != 2.7.3 ] || [ "$torch_version" != 2.13.0 ]; then
  lock=()  # another version than the lock was made for: only the constraints above
fi
"${pip[@]}" install --quiet -c "$constraints" "${lock[@]}" "torch==$torch_version"
"${pip[@]}" install --quiet -c "$constraints" "${lock[@]}" "nemo-toolkit[llm,run]==$nemo_version" pytest pyyaml

# NeMo-Aligner's sources, unpacked next to the env (read, never imported).
aligner="$venv/share/nemo-aligner-$aligner_version"
if [ ! -d "$aligner/nemo_aligner" ]; then
  tmp=$(mktemp -d)
  "${pip[@]}" download --quiet --no-deps "nemo-aligner==$aligner_version" -d "$tmp"
  mkdir -p "$aligner"
  "$venv/bin/python" -m zipfile -e "$tmp"/nemo_aligner-*.whl "$aligner"
  rm -rf "$tmp"
fi

# NeMo's scripts/ at the installed version's tag (read by tests/nemo_env/test_gpu_boundary.py).
nemo_src="$venv/share/nemo-src"
if [ ! -d "$nemo_src/scripts/checkpoint_converters" ]; then
  if git clone --quiet --depth 1 --branch "v$nemo_version" --filter=blob:none --sparse \
      https://github.com/NVIDIA/NeMo.git "$nemo_src" 2>/dev/null; then
    git -C "$nemo_src" sparse-checkout set scripts/checkpoint_converters scripts/nlp_language_modeling
  else
    echo "NeMo v$nemo_version sources not fetched (no github.com?): set NEMO_SRC to a checkout for make nemo-check" >&2
  fi
fi

"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ("nemo-toolkit", "megatron-core", "nvidia-modelopt", "torch", "transformers"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} missing")
EOF
echo "nemo env ready: $venv (NeMo-Aligner sources in $aligner)"
