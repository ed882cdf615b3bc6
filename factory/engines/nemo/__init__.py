"""The nemo engine: recipe stages as jobs on NVIDIA's stack.

    correct  -> NeMo 2 llm.train (full-parameter causal-LM fine-tuning)
    prune    -> NeMo 2 llm.prune (ModelOpt mcore_minitron; PruningConfig targets / drop_layers)
    distill  -> NeMo 2 llm.distill (ModelOpt logit KD, DistillationConfig)
    sft, dpo -> NeMo-Aligner train_gpt_sft.py / train_gpt_dpo.py with Hydra overrides

Each job imports its HF inputs into NeMo's format first and exports its result
to an HF checkpoint at the end, which becomes an artifact with the same
manifest the native engine writes. Modules, one concern each:

    settings      the recipe's ``nemo:`` block (images, GPUs, parallelism, launcher)
    capabilities  what the engine can do; recipe validation fails early otherwise
    specs         stage config -> job spec (NeMo / ModelOpt / Aligner names and values)
    render        job spec -> job dir (config.yaml, run.sh, scripts, launch.sh)
    launchers     docker, torchrun and Slurm (sbatch + pyxis) commands
    prepare       host side: input models and data into the run dir
    finalize      job side: exported checkpoint -> artifact with manifest
    executor      render, prepare and launch a stage's job (`factory run`); the --dry-run plan
    scripts/      the programs that run inside the jobs"""
