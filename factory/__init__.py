"""Minitron model factory: recipe-driven teacher correction, pruning,
distillation, alignment, evaluation and release of compressed LLMs."""

__version__ = "0.1.0"
