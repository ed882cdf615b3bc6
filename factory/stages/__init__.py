"""Stage kinds. ``factory.stages.base.stage_kinds()`` imports the built-in ones."""

BUILTIN = ("tokenize", "correct", "prune", "distill", "sft", "pairs", "generate", "dpo", "evaluate", "gate", "release")
