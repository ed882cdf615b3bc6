"""Minitron model factory: recipe-driven teacher correction, pruning,
distillation, alignment, evaluation and release of compressed LLMs."""

from foundation import __version__  # noqa: F401 (one version for the distribution)
