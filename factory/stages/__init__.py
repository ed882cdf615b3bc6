"""Stage kinds. ``factory.stages.base.stage_kinds()`` imports the built-in ones."""

BUILTIN = ("tokenize", "correct", "prune", "distill", "sft", "pairs", "dpo", "evaluate", "gate", "release")
