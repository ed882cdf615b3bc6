"""Training components the stages compose: ``loop.train`` (the LM fine-tune loop:
schedule, accumulation, held-out evals, checkpoint and resume), ``kd`` (the KD
objective), ``heldout`` (held-out evaluators), ``checkpoints`` (HF checkpoint
I/O), ``results`` (a training stage's metrics from the loop's result), ``data``
(packed token blocks), ``losses``, ``optim``, ``metrics`` (the JSONL log) and
``dist`` (torchrun data parallelism)."""
