"""lm-evaluation-harness multiple-choice tasks on local data, and a faster
log-likelihood model for them.

- ``taskdir``: task YAMLs (``templates/``) completed with local data paths;
- ``docs``: the document functions those YAMLs name;
- ``packing``: how requests that share a context share one forward pass;
- ``fast_lm``: ``FastLM``, registered with lm-eval as ``factory-hf``;
- ``records``: lm-eval's logged samples as the suite's (Sample, outputs, Score).

Importing this package registers ``factory-hf`` with lm-eval.
"""

from evals.harness.fast_lm import FastLM

__all__ = ["FastLM"]
