#!/usr/bin/env bash
# Stage correct (correct) of recipe llama31-minitron-4b-depth: a nemo2 job of the factory's
# nemo engine. Edit config.yaml and rerun rather than editing this file.
#   bash run.sh all                      prepare, train, finish
#   bash run.sh prepare|train|finish     one step (Slurm runs train on every task with DIST=python)
#   bash run.sh trained                  exit 0 once training has done all of its steps
set -euo pipefail
JOB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=${FACTORY_RUN_DIR:-$(cd "$JOB_DIR/../.." && pwd)}
NEMO_DIR=${NEMO_DIR:-/opt/NeMo}
ALIGNER_DIR=${ALIGNER_DIR:-/opt/NeMo-Aligner}
DIST=${DIST:-torchrun --nproc-per-node=8 --nnodes=4}
FACTORY_MAX_TIME=${FACTORY_MAX_TIME:-null}
export JOB_DIR RUN_DIR NEMO_DIR ALIGNER_DIR
export PYTHONPATH="$JOB_DIR${PYTHONPATH:+:$PYTHONPATH}"

prepare() {
  date +%s > "$JOB_DIR/.started"
  python "$JOB_DIR/job.py" import "$JOB_DIR/config.yaml"
}

train() {
  $DIST "$JOB_DIR/job.py" run "$JOB_DIR/config.yaml"
}

trained() {
  grep -q '"done": true' "$JOB_DIR/progress.json" 2>/dev/null
}

finish() {
  python "$JOB_DIR/job.py" export "$JOB_DIR/config.yaml"
  python -m factory.engines.nemo.finalize "$JOB_DIR/manifest.template.json"
}

case "${1:-all}" in
  prepare) prepare ;;
  train) train ;;
  finish) finish ;;
  trained) trained ;;
  all) prepare; train; finish ;;
  *) echo "usage: run.sh [all|prepare|train|finish|trained]" >&2; exit 2 ;;
esac
