#!/usr/bin/env bash
# Stage dpo (dpo) of recipe smollm2-minitron: a aligner job of the factory's
# nemo engine. Edit config.yaml and rerun rather than editing this file.
#   bash run.sh all                      prepare, train, finish
#   bash run.sh prepare|train|finish     one step (Slurm runs train on every task with DIST=python)
#   bash run.sh trained                  exit 0 once training has done all of its steps
set -euo pipefail
JOB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUN_DIR=${FACTORY_RUN_DIR:-$(cd "$JOB_DIR/../.." && pwd)}
NEMO_DIR=${NEMO_DIR:-/opt/NeMo}
ALIGNER_DIR=${ALIGNER_DIR:-/opt/NeMo-Aligner}
DIST=${DIST:-torchrun --nproc-per-node=4 --nnodes=1}
FACTORY_MAX_TIME=${FACTORY_MAX_TIME:-null}
export JOB_DIR RUN_DIR NEMO_DIR ALIGNER_DIR
export PYTHONPATH="$JOB_DIR${PYTHONPATH:+:$PYTHONPATH}"

prepare() {
  date +%s > "$JOB_DIR/.started"
  python "$NEMO_DIR/scripts/checkpoint_converters/convert_llama_hf_to_nemo.py" \
      --input_name_or_path "$RUN_DIR/sft" \
      --output_path "$RUN_DIR/.nemo/dpo/model.nemo" \
      --precision bf16
  python "$JOB_DIR/render_chat.py" dpo "$RUN_DIR/sft" "$RUN_DIR/.nemo/dpo/data"
}

train() {
  $DIST "$ALIGNER_DIR/examples/nlp/gpt/train_gpt_dpo.py" \
      trainer.num_nodes=1 \
      trainer.devices=4 \
      trainer.precision=bf16 \
      trainer.dpo.gradient_clip_val=1.0 \
      trainer.dpo.save_interval=16 \
      "exp_manager.explicit_log_dir=$RUN_DIR/.nemo/dpo/aligner" \
      exp_manager.create_wandb_logger=False \
      exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True \
      model.optim.lr=1e-05 \
      model.optim.weight_decay=0.01 \
      'model.optim.betas=[0.9,0.95]' \
      model.optim.sched.min_lr=1.0000000000000002e-06 \
      model.optim.sched.constant_steps=0 \
      model.optim.sched.warmup_steps=null \
      ++model.optim.sched.warmup_ratio=0.1 \
      trainer.dpo.max_epochs=2 \
      trainer.dpo.max_steps=-1 \
      trainer.dpo.limit_train_batches=1.0 \
      trainer.dpo.val_check_interval=1.0 \
      "pretrained_checkpoint.restore_from_path=$RUN_DIR/.nemo/dpo/model.nemo" \
      ++model.tensor_model_parallel_size=1 \
      ++model.pipeline_model_parallel_size=1 \
      model.seed=1234 \
      model.global_batch_size=4 \
      model.micro_batch_size=1 \
      model.dpo.ref_policy_kl_penalty=0.1 \
      model.dpo.preference_loss=dpo \
      model.dpo.sft_loss_weight=0 \
      model.dpo.preference_loss_weight=1 \
      model.dpo.preference_average_log_probs=False \
      model.data.data_impl=jsonl \
      model.data.seq_length=384 \
      "model.data.data_prefix={train:[$RUN_DIR/.nemo/dpo/data/train.aligner.jsonl],validation:[$RUN_DIR/.nemo/dpo/data/valid.aligner.jsonl],test:[$RUN_DIR/.nemo/dpo/data/valid.aligner.jsonl]}" \
      "++exp_manager.max_time_per_run=$FACTORY_MAX_TIME"
}

trained() {
  find "$RUN_DIR/.nemo/dpo/aligner" -name "*.nemo" -print 2>/dev/null | grep -q .
}

finish() {
  python "$JOB_DIR/job_tools.py" \
      find-nemo \
      "$RUN_DIR/.nemo/dpo/aligner" \
      "$RUN_DIR/.nemo/dpo/trained.nemo"
  python "$NEMO_DIR/scripts/checkpoint_converters/convert_llama_nemo_to_hf.py" \
      --input_name_or_path "$RUN_DIR/.nemo/dpo/trained.nemo" \
      --output_path "$RUN_DIR/.nemo/dpo/hf-weights/pytorch_model.bin" \
      --hf_input_path "$RUN_DIR/sft" \
      --hf_output_path "$RUN_DIR/.nemo/dpo/hf"
  python "$JOB_DIR/job_tools.py" carry-tokenizer "$RUN_DIR/sft" "$RUN_DIR/.nemo/dpo/hf"
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
