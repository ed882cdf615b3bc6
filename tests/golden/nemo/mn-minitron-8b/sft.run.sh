#!/usr/bin/env bash
# Stage sft (sft) of recipe mn-minitron-8b: a aligner job of the factory's
# nemo engine. Edit config.yaml and rerun rather than editing this file.
#   bash run.sh all                      prepare, train, finish
#   bash run.sh prepare|train|finish     one step (Slurm runs train on every task with DIST=python)
#   bash run.sh trained                  exit 0 once training has done all of its steps
set -euo pipefail
JOB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=${FACTORY_RUN_DIR:-$(cd "$JOB_DIR/../.." && pwd)}
NEMO_DIR=${NEMO_DIR:-/opt/NeMo}
ALIGNER_DIR=${ALIGNER_DIR:-/opt/NeMo-Aligner}
DIST=${DIST:-torchrun --nproc-per-node=8 --nnodes=1}
FACTORY_MAX_TIME=${FACTORY_MAX_TIME:-null}
export JOB_DIR RUN_DIR NEMO_DIR ALIGNER_DIR
export PYTHONPATH="$JOB_DIR${PYTHONPATH:+:$PYTHONPATH}"

prepare() {
  date +%s > "$JOB_DIR/.started"
  python "$NEMO_DIR/scripts/checkpoint_converters/convert_mistral_7b_hf_to_nemo.py" \
      --input_name_or_path "$RUN_DIR/distill" \
      --output_path "$RUN_DIR/.nemo/sft/model.nemo" \
      --precision bf16
  python "$JOB_DIR/render_chat.py" sft "$RUN_DIR/distill" "$RUN_DIR/.nemo/sft/data"
}

train() {
  $DIST "$ALIGNER_DIR/examples/nlp/gpt/train_gpt_sft.py" \
      trainer.num_nodes=1 \
      trainer.devices=8 \
      trainer.precision=bf16 \
      trainer.sft.gradient_clip_val=1.0 \
      trainer.sft.save_interval=50 \
      "exp_manager.explicit_log_dir=$RUN_DIR/.nemo/sft/aligner" \
      exp_manager.create_wandb_logger=False \
      exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True \
      model.optim.lr=5e-06 \
      model.optim.weight_decay=0.01 \
      'model.optim.betas=[0.9,0.95]' \
      model.optim.sched.min_lr=5.000000000000001e-07 \
      model.optim.sched.constant_steps=0 \
      model.optim.sched.warmup_steps=null \
      ++model.optim.sched.warmup_ratio=0.03 \
      trainer.sft.max_epochs=1 \
      trainer.sft.max_steps=-1 \
      trainer.sft.val_check_interval=1000000 \
      trainer.sft.limit_val_batches=1.0 \
      "model.restore_from_path=$RUN_DIR/.nemo/sft/model.nemo" \
      model.tensor_model_parallel_size=1 \
      model.pipeline_model_parallel_size=1 \
      model.seed=1234 \
      model.data.chat=False \
      "model.data.train_ds.file_path=$RUN_DIR/.nemo/sft/data/train.aligner.jsonl" \
      "model.data.validation_ds.file_path=$RUN_DIR/.nemo/sft/data/valid.aligner.jsonl" \
      model.data.train_ds.global_batch_size=128 \
      model.data.train_ds.micro_batch_size=1 \
      model.data.train_ds.max_seq_length=4096 \
      'model.data.train_ds.prompt_template='"'"'{input}{output}'"'"'' \
      model.data.train_ds.label_key=output \
      model.data.train_ds.truncation_field=input \
      model.data.train_ds.add_eos=False \
      model.data.train_ds.add_bos=False \
      "++exp_manager.max_time_per_run=$FACTORY_MAX_TIME"
}

trained() {
  find "$RUN_DIR/.nemo/sft/aligner" -name "*.nemo" -print 2>/dev/null | grep -q .
}

finish() {
  python "$JOB_DIR/job_tools.py" \
      find-nemo \
      "$RUN_DIR/.nemo/sft/aligner" \
      "$RUN_DIR/.nemo/sft/trained.nemo"
  python "$NEMO_DIR/scripts/checkpoint_converters/convert_mistral_7b_nemo_to_hf.py" \
      --input_name_or_path "$RUN_DIR/.nemo/sft/trained.nemo" \
      --output_path "$RUN_DIR/.nemo/sft/hf" \
      --hf_model_name "$RUN_DIR/distill" \
      --precision bf16
  python "$JOB_DIR/job_tools.py" carry-tokenizer "$RUN_DIR/distill" "$RUN_DIR/.nemo/sft/hf"
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
