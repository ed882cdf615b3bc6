"""What a recipe will cost before it runs: per stage the parameters, FLOPs, memory
per rank and time, from the model shapes alone (no weights are loaded).

The arithmetic, stated once (``N`` parameters doing matmuls: the input embedding is
a lookup and does not count, a tied LM head does; ``L`` layers, ``s`` sequence
length, ``d`` = heads x head_dim):

- training FLOPs per token: ``6 N + 6 L s d`` (the matmuls forward and backward, plus
  causal attention's QK^T and AV, half of the non-causal ``12 L s d``); a frozen model's
  forward is ``2 N + 2 L s d`` per token (distill's teacher, dpo's reference pass,
  prune's importance estimation, held-out evals).
- memory per rank: weights, gradients and optimizer state by dtype and layout (native:
  AdamW moments in the weights' dtype, no master copy; nemo ``bf16-mixed``: bf16 weights,
  fp32 main gradients, fp32 master weights and moments, the optimizer sharded over data
  parallel as Megatron's distributed optimizer does); activations saved for backward per
  layer and token, adapted from Korthikanti et al. 2022 ("Reducing Activation Recomputation
  in Large Transformer Models", 34 s b h + 5 a s^2 b bytes per layer in bf16 for GPT) to
  Llama's SwiGLU MLP, grouped-query attention and rotary embeddings:
  ``(4h + 3d + 3 d_kv + 4 f)`` elements per token per layer, plus ``2.5 a s`` when
  attention scores are materialised (not with SDPA / flash attention, which both engines
  use); with activation checkpointing only each layer's input (``h``) is kept, plus one
  layer's full set while it is recomputed. The LM head's logits: the native engine's fused
  losses never hold [tokens x vocab]; they hold one chunk of ``loss_chunk`` (``kd_chunk``
  for distill) rows in fp32, a few buffers deep. NeMo's vocab-parallel cross entropy holds
  the micro-batch's fp32 logits split over tensor parallel.
- time: ``overhead + FLOPs / (ranks x peak x efficiency)``; the efficiency (and the fixed
  overhead: loading, saving, data preparation) is fitted per stage kind and device from
  measured runs' manifests (``calibrate``), or a stated default where none was measured.
- CPU peak memory is the process's resident set, which includes the Python, torch and
  transformers runtime: a measured constant (``CPU_RUNTIME_GIB``). A pipeline runs every
  stage in one process, so a stage's measured peak is the largest of it and its
  predecessors'; ``running_peaks`` models that.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from factory.pruning.arch import Shape
from foundation.configs import to_dict
from foundation.host import describe

GIB = 2**30
TRAINING_KINDS = ("correct", "distill", "sft", "dpo")
MODELLED_KINDS = (*TRAINING_KINDS, "prune")
# the resident set of a process with python, torch, transformers and the factory's stage
# modules imported and one trivial training step taken (thread pools, kernel caches, the
# autograd engine): 0.50 GiB measured by bench/planner_validation.py on a 2-core Xeon
CPU_RUNTIME_GIB = 0.50
# CUDA context, NCCL buffers and allocator fragmentation kept free when judging a fit
GPU_RESERVE_GIB = 4.0
DEFAULT_GPU_EFFICIENCY = 0.40  # of dense bf16 peak: what Megatron-class trainers report for 8B on H100
DEFAULT_CPU_EFFICIENCY = 0.25  # of the host's fp32 matmul probe, where no run was measured


@dataclass(frozen=True)
class Device:
    """One kind of accelerator (or a CPU host): its memory and the peak the efficiency is against."""

    key: str
    name: str
    memory_gib: float  # what torch reports as the device's total memory
    peak_flops: float  # dense bf16 (GPUs) / the fp32 matmul probe (CPU)
    source: str


GPUS = {
    "h100-80gb": Device(
        "h100-80gb",
        "NVIDIA H100 SXM5 80GB",
        79.6,
        989e12,
        "NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOPS dense BF16 (1,979 with sparsity), SXM5",
    ),
    "h200": Device(
        "h200",
        "NVIDIA H200 SXM 141GB",
        140.4,
        989e12,
        "NVIDIA H200 Tensor Core GPU datasheet: 1,979 TFLOPS BF16 with sparsity = 989 dense, SXM",
    ),
    "a100-80gb": Device(
        "a100-80gb",
        "NVIDIA A100 SXM4 80GB",
        80.0,
        312e12,
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS dense BF16 (624 with sparsity)",
    ),
}
_GPU_NAMES = {"H100": "h100-80gb", "H200": "h200", "A100": "a100-80gb"}  # substrings of torch's device names


def cpu_device(host: dict | None = None) -> Device:
    """This CPU host (or the host a manifest recorded): RAM from /proc/meminfo, peak from the fp32 matmul probe."""
    if host is None:
        host = describe()
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    except OSError:
        pass
    gflops = float(host.get("fp32_matmul_gflops") or 100.0)
    return Device("cpu", host.get("cpu", "CPU"), round(mem, 1), gflops * 1e9, "fp32 matmul probe of this host")


def device_of_host(host: dict) -> Device:
    """The device a manifest's stage ran on: its first GPU when the host had one, else its CPU."""
    for gpu in host.get("gpus") or []:
        for part, key in _GPU_NAMES.items():
            if part in gpu:
                return GPUS[key]
    return cpu_device(host)


# ---------------------------------------------------------------- parameters and FLOPs


def param_count(config: dict) -> int:
    """Parameters of a Llama-family model from its config.json (embeddings counted once when tied)."""
    return Shape.from_config(config).params()


def matmul_params(shape: Shape) -> int:
    """Parameters that multiply activations: all but the input embedding (a lookup) unless it is tied to the head."""
    return shape.params() - (0 if shape.tied else shape.vocab_size * shape.hidden_size)


def attention_flops(shape: Shape, seq: int) -> float:
    """Forward FLOPs per token of causal attention's QK^T and AV products over all layers."""
    return 2 * shape.num_layers * seq * shape.num_attention_heads * shape.head_dim


def forward_flops(shape: Shape, seq: int) -> float:
    """Forward FLOPs per token: ``2 N + 2 L s d``."""
    return 2 * matmul_params(shape) + attention_flops(shape, seq)


def train_flops(shape: Shape, seq: int) -> float:
    """Forward and backward FLOPs per trained token: ``6 N + 6 L s d``."""
    return 3 * forward_flops(shape, seq)


def shrink_to(shape: Shape, target_params: int) -> Shape:
    """A shape of about ``target_params`` with only the MLP narrowed: the estimate for a
    ``target_params`` prune, whose chosen candidate is known only after it ran."""
    per_neuron = 3 * shape.hidden_size * shape.num_layers
    ffn = shape.ffn_hidden_size - max(0, shape.params() - target_params) // per_neuron
    return replace(shape, ffn_hidden_size=max(1, ffn))


@dataclass
class Work:
    """The FLOPs of one stage and the shapes they came from."""

    model: Shape
    tokens: int
    flops: float
    teacher: Shape | None = None


def stage_work(kind: str, cfg: dict, model: Shape, tokens: int, teacher: Shape | None = None) -> Work:
    """FLOPs of one stage of ``kind`` with config ``cfg`` (plain data) on ``tokens`` tokens.
    ``model`` is the model trained (prune: the model pruned); ``teacher`` distill's teacher."""
    if kind == "prune":
        return Work(model, tokens, _prune_flops(cfg, model, tokens))
    seq = cfg.get("seq_len", 512)
    flops = train_flops(model, seq) * tokens
    if kind == "distill" and teacher is not None:
        flops += forward_flops(teacher, seq) * tokens  # the frozen teacher's forward on every token
    if kind == "dpo":
        flops += forward_flops(model, seq) * tokens  # the reference log-probs, one pass (cached thereafter)
    if kind in ("correct", "distill"):
        steps = max(1, math.ceil(tokens / max(1, seq * cfg.get("batch_size", 1) * cfg.get("grad_accum", 1))))
        evals = 2 + (steps // cfg["eval_every"] if cfg.get("eval_every") else 0) + len(cfg.get("eval_at_tokens") or [])
        per = forward_flops(model, seq) + (forward_flops(teacher, seq) if kind == "distill" and teacher else 0)
        flops += evals * cfg.get("eval_tokens", 0) * per
    return Work(model, tokens, flops, teacher if kind == "distill" else None)


def _prune_flops(cfg: dict, source: Shape, calib_tokens: int) -> float:
    """Importance estimation (one forward over the calibration set), the held-out loss of
    the source and of each candidate (a pruned model: ``target_params`` / N of the source's
    cost where a budget is given), depth's per-layer loss, and ranking distillations."""
    cal = cfg.get("calibration") or {}
    seq = cal.get("seq_len", 512)
    heldout = cal.get("heldout_samples", 0) * seq
    fwd = forward_flops(source, seq)
    candidates = cfg.get("max_candidates", 1) if cfg.get("target_params") else 1
    ratio = min(1.0, cfg["target_params"] / source.params()) if cfg.get("target_params") else 1.0
    flops = fwd * (calib_tokens + heldout * (1 + candidates * ratio))
    if cfg.get("target_num_layers") and cfg.get("depth_criterion") == "lm_loss" and not cfg.get("drop_layers"):
        flops += fwd * heldout * source.num_layers  # one held-out pass per candidate block to drop
    rank = cfg.get("rank_distill") or {}
    if cfg.get("rank_by") == "distill":
        top = rank.get("top") or candidates
        flops += top * rank.get("max_tokens", 0) * (train_flops(source, seq) / 2 + fwd)  # student ~half the source
    return flops


# ---------------------------------------------------------------- memory per rank


@dataclass(frozen=True)
class Layout:
    """How a stage's work is spread: ``ranks`` processes (GPUs), data-parallel as DDP
    (replicated) or FSDP (decoder layers sharded), or Megatron tensor / pipeline parallel."""

    engine: str = "native"
    ranks: int = 1
    parallel: str = "ddp"  # native: ddp or fsdp
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    micro_batch: int | None = None  # nemo: sequences per GPU per forward pass

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def data_parallel(self) -> int:
        return max(1, self.ranks // self.model_parallel)


@dataclass
class Memory:
    """Bytes per rank, by what holds them."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0  # saved for backward, without activation checkpointing
    activations_ckpt: float = 0.0  # the same with full activation checkpointing
    logits: float = 0.0  # the LM head's chunk buffers (native) or micro-batch logits (nemo)
    teacher: float = 0.0  # a frozen model's weights and its forward's transient buffers
    runtime: float = 0.0  # the CPU process's baseline (Python, torch, transformers)

    def total(self, checkpointing: bool = False) -> float:
        act = self.activations_ckpt if checkpointing else self.activations
        return self.weights + self.gradients + self.optimizer + act + self.logits + self.teacher + self.runtime


def _bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "bf16", "float16") else 4


def layer_activation_elements(shape: Shape, seq: int, flash: bool = True) -> float:
    """Elements one layer saves for backward per token: both norms' inputs and outputs (4h),
    q, rotated q and attention output (3d), k, rotated k and v (3 d_kv), the MLP's gate, up,
    silu(gate) and product (4f); plus the scores and softmax (2.5 a s) without flash attention."""
    d, dkv = shape.num_attention_heads * shape.head_dim, shape.num_query_groups * shape.head_dim
    elems = 4 * shape.hidden_size + 3 * d + 3 * dkv + 4 * shape.ffn_hidden_size
    return elems + (0 if flash else 2.5 * shape.num_attention_heads * seq)


def activation_bytes(shape: Shape, rows: int, seq: int, dtype: str, tensor_parallel: int = 1) -> tuple[float, float]:
    """(without, with full activation checkpointing) bytes of saved activations for ``rows``
    sequences of ``seq`` tokens; tensor parallel (with sequence parallel) splits them."""
    tokens, b = rows * seq, _bytes(dtype)
    layer = layer_activation_elements(shape, seq) * tokens * b / tensor_parallel
    full = shape.num_layers * layer
    ckpt = shape.num_layers * tokens * shape.hidden_size * b / tensor_parallel + layer
    return full, ckpt


def _shard(shape: Shape, layout: Layout) -> float:
    """The fraction of the parameters one rank holds: FSDP shards the decoder layers only
    (embeddings, final norm and LM head stay replicated); TP x PP split everything."""
    if layout.engine == "nemo":
        return 1 / layout.model_parallel
    if layout.parallel == "fsdp" and layout.ranks > 1:
        total = shape.params()
        outside = shape.vocab_size * shape.hidden_size * (1 if shape.tied else 2) + shape.hidden_size
        return (outside + (total - outside) / layout.ranks) / total
    return 1.0


def training_state(shape: Shape, dtype: str, layout: Layout) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes per rank. Native: everything in the
    weights' dtype, AdamW's two moments included. NeMo bf16-mixed: bf16 weights, fp32 main
    gradients, fp32 master weights and two fp32 moments sharded over data parallel too."""
    n = shape.params() * _shard(shape, layout)
    if layout.engine == "nemo" and dtype == "bfloat16":
        return 2 * n, 4 * n, 12 * n / layout.data_parallel
    b = _bytes(dtype)
    return b * n, b * n, 2 * b * n


def stage_memory(kind: str, cfg: dict, work: Work, layout: Layout, cpu: bool) -> Memory:
    """Peak bytes per rank of one stage, by component."""
    dtype = cfg.get("dtype", "float32")
    if layout.engine == "nemo" and dtype == "float32" and not cpu:
        dtype = "bfloat16"  # nemo trains in its `precision` (bf16-mixed by default)
    mem = Memory(runtime=CPU_RUNTIME_GIB * GIB if cpu else 0.0)
    if kind == "prune":
        return _prune_memory(cfg, work.model, dtype, mem, layout)
    if kind not in TRAINING_KINDS:
        mem.weights = work.model.params() * _bytes(dtype)  # inference stages: the weights, at least
        return mem
    seq, shape = cfg.get("seq_len", 512), work.model
    rows = layout.micro_batch or math.ceil(cfg.get("batch_size", 1) / layout.data_parallel)
    if kind == "dpo":
        rows *= 2  # chosen and rejected answers side by side
    mem.weights, mem.gradients, mem.optimizer = training_state(shape, dtype, layout)
    mem.activations, mem.activations_ckpt = activation_bytes(shape, rows, seq, dtype, layout.tensor_parallel)
    vocab = shape.vocab_size
    if layout.engine == "nemo":
        mem.logits = 2 * rows * seq * vocab * 4 / layout.tensor_parallel  # fp32 logits and their gradient
    else:
        chunk = cfg.get("kd_chunk", 256) if kind == "distill" else cfg.get("loss_chunk", 1024)
        mem.logits = (5 if kind == "distill" else 3) * min(chunk, rows * seq) * vocab * 4
    if work.teacher is not None:
        t = work.teacher
        mem.teacher = t.params() * _bytes(dtype) / (layout.model_parallel if layout.engine == "nemo" else 1)
        mem.teacher += rows * seq * (t.hidden_size + 3 * t.ffn_hidden_size) * _bytes(dtype)  # final states, one layer
    return mem


def _prune_memory(cfg: dict, source: Shape, dtype: str, mem: Memory, layout: Layout) -> Memory:
    """Prune holds the source and one pruned copy (split over nemo's pipeline stages), a
    forward's transient buffers (no gradients) and the held-out loss's full logits of one
    calibration batch."""
    cal = cfg.get("calibration") or {}
    rows, seq, b = cal.get("batch_size", 8), cal.get("seq_len", 512), _bytes(dtype)
    mem.weights = 2 * source.params() * b / (layout.model_parallel if layout.engine == "nemo" else 1)
    mem.activations = mem.activations_ckpt = rows * seq * (2 * source.hidden_size + 3 * source.ffn_hidden_size) * b
    mem.logits = rows * seq * source.vocab_size * 4
    return mem


# ---------------------------------------------------------------- calibration from manifests


@dataclass(frozen=True)
class Rate:
    """Achieved speed of one stage kind on one device kind, fitted from measured runs:
    ``wall = overhead_s + FLOPs / (peak x efficiency)``."""

    device: str  # "cpu" or a GPUS key
    kind: str
    precision: str  # the stage's matmul_precision (CPUs run "medium" about 1.6x faster)
    efficiency: float
    overhead_s: float
    runs: int


@dataclass(frozen=True)
class Measured:
    """One manifest read back: what the stage did, on what, in how long."""

    path: Path
    stage: str
    kind: str
    device: Device
    precision: str
    flops: float
    tokens: int
    wall_s: float
    peak_gib: float | None


def _config_at(run_dir: Path, name: str | None) -> Shape | None:
    try:
        return Shape.from_config(json.loads((run_dir / str(name) / "config.json").read_text()))
    except (OSError, ValueError, KeyError):
        return None


def read_measured(stage_dir: Path) -> Measured | None:
    """A stage artifact's measured work, or None where its kind or shapes are not modelled
    (a teacher or source that is a models: entry leaves no config.json in the run dir)."""
    try:
        m = json.loads((stage_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    kind, cfg, tokens = m.get("kind"), m.get("config") or {}, m.get("tokens")
    if kind not in MODELLED_KINDS or not tokens or not m.get("wall_s"):
        return None
    fields, run_dir = m.get("input_fields") or {}, stage_dir.parent
    model = _config_at(run_dir, fields.get("model")) if kind == "prune" else _config_at(run_dir, stage_dir.name)
    teacher = _config_at(run_dir, fields.get("teacher")) if kind == "distill" else None
    if model is None or (kind == "distill" and teacher is None):
        return None
    work = stage_work(kind, cfg, model, int(tokens), teacher)
    peak = (m.get("metrics") or {}).get("peak_memory_gib")
    device = device_of_host(m.get("host") or {})
    precision = cfg.get("matmul_precision", "highest")
    return Measured(
        stage_dir,
        m.get("stage", stage_dir.name),
        kind,
        device,
        precision,
        work.flops,
        int(tokens),
        float(m["wall_s"]),
        peak,
    )


def find_measured(roots: list[Path]) -> list[Measured]:
    """Every modelled stage artifact under ``roots`` (runs dirs, run dirs or artifact dirs)."""
    out = []
    for root in roots:
        for manifest in sorted(Path(root).glob("**/manifest.json")):
            rel = manifest.relative_to(root).parts
            if any(p.startswith(".") for p in rel):  # work dirs and caches, not published artifacts
                continue
            found = read_measured(manifest.parent)
            if found is not None:
                out.append(found)
    return out


def fit_rates(measured: list[Measured]) -> list[Rate]:
    """Per (device, kind, precision): efficiency and fixed overhead by least squares over
    the runs (through the origin, overhead 0, where one run or no positive intercept).
    Of repeated runs of the same work only the fastest counts: on a shared machine
    contention only ever adds time."""
    fastest: dict[tuple, Measured] = {}
    for m in measured:
        key = (m.device.key, m.kind, m.precision, round(m.flops))
        if key not in fastest or m.wall_s < fastest[key].wall_s:
            fastest[key] = m
    groups: dict[tuple, list[Measured]] = {}
    for m in fastest.values():
        groups.setdefault((m.device.key, m.kind, m.precision), []).append(m)
    rates = []
    for (dev, kind, prec), ms in sorted(groups.items()):
        xs = [m.flops / m.device.peak_flops for m in ms]  # seconds at 100% of peak
        ys = [m.wall_s for m in ms]
        slope, overhead = sum(ys) / sum(xs), 0.0
        if len({round(x, 12) for x in xs}) > 1:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            s = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            if s > 0 and my - s * mx >= 0:
                slope, overhead = s, my - s * mx
        rates.append(Rate(dev, kind, prec, 1 / slope, overhead, len(ms)))
    return rates


def calibrate(roots: list[Path]) -> list[Rate]:
    """The rates measured runs under ``roots`` achieved (``factory calibrate``)."""
    return fit_rates(find_measured(roots))


def pick_rate(rates: list[Rate], device: Device, kind: str, precision: str) -> tuple[float, float, str]:
    """(efficiency, overhead_s, where it came from) for a stage: the same kind and precision
    on the same device kind, else the same kind, else the device's mean, else the default."""
    same_dev = [r for r in rates if r.device == device.key]
    for pool in (
        [r for r in same_dev if r.kind == kind and r.precision == precision],
        [r for r in same_dev if r.kind == kind],
    ):
        if pool:
            r = pool[0]
            return r.efficiency, r.overhead_s, f"calibrated ({r.runs} run{'s' if r.runs > 1 else ''})"
    if same_dev:
        eff = sum(r.efficiency for r in same_dev) / len(same_dev)
        return eff, 0.0, f"calibrated on other kinds ({len(same_dev)})"
    default = DEFAULT_CPU_EFFICIENCY if device.key == "cpu" else DEFAULT_GPU_EFFICIENCY
    return default, 0.0, "default"


# ---------------------------------------------------------------- planning a recipe


@dataclass(frozen=True)
class Target:
    """Where the plan is for: a device kind and, where given, GPUs per node, nodes and a time limit."""

    device: Device
    gpus: int | None = None
    nodes: int | None = None
    time_limit_s: float | None = None


@dataclass
class StagePlan:
    """One stage's predicted cost."""

    stage: str
    kind: str
    layout: Layout
    device: Device
    params: int | None = None
    teacher_params: int | None = None
    tokens: int | None = None
    tokens_note: str = ""
    flops: float | None = None
    memory: Memory | None = None
    time_s: float | None = None
    efficiency: float | None = None
    efficiency_source: str = ""
    time_limit_s: float | None = None
    verdicts: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float | None:
        return None if self.memory is None else self.memory.total() / GIB

    @property
    def gpu_hours(self) -> float | None:
        if self.time_s is None or self.device.key == "cpu":
            return None
        return self.time_s * self.layout.ranks / 3600


def parse_time(text: str) -> float:
    """Seconds of a Slurm time limit: [D-]HH:MM:SS, HH:MM or MM."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"bad time limit {text!r}: expected HH:MM:SS")
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(3) is None:
        return days * 86400 + a * 60
    if m.group(4) is None:
        return days * 86400 + a * 3600 + b * 60
    return days * 86400 + a * 3600 + b * 60 + c


def model_shapes(recipe) -> dict[str, Shape | None]:
    """Every model entry's and stage's output shape as far as known offline; a
    ``target_params`` prune's result estimated by narrowing the MLP (``shrink_to``)."""
    from factory.shapes import first_model, stage_shapes  # the stage kinds (and torch) load with it
    from factory.sources.models import peek_config  # likewise

    out: dict[str, Shape | None] = {}
    for name, spec in recipe.models.items():
        cfg = peek_config(spec, recipe.base)
        out[name] = _shape_or_none(cfg)
    known = stage_shapes(recipe.stages, recipe.models, recipe.base)
    for name, cfg in recipe.stages.items():
        src = out.get(first_model(cfg)) if first_model(cfg) else None
        if known.get(name) is not None:
            out[name] = _shape_or_none(known[name])
        elif cfg.kind == "prune" and src is not None and getattr(cfg, "target_params", None):
            out[name] = shrink_to(src, cfg.target_params)
        else:
            out[name] = src if cfg.kind != "prune" else None
    return out


def _shape_or_none(cfg: dict | None) -> Shape | None:
    try:
        return Shape.from_config(cfg) if cfg else None
    except (KeyError, TypeError):
        return None


def planned_tokens(kind: str, cfg: dict, measured: int | None) -> tuple[int | None, str]:
    """Tokens a stage will process, and how that is known: from its config, or from a
    measured run of it (sft and dpo count epochs over data the plan does not read)."""
    if kind in ("correct", "distill"):
        per_step = cfg["seq_len"] * cfg["batch_size"] * cfg.get("grad_accum", 1)
        return math.ceil(cfg["max_tokens"] / per_step) * per_step, "budget"
    if kind == "prune":
        cal = cfg.get("calibration") or {}
        return cal.get("samples", 0) * cal.get("seq_len", 0), "calibration"
    if measured:
        return measured, "measured"
    if kind == "sft" and not cfg.get("epochs"):
        return cfg.get("max_tokens"), "budget"
    if kind == "dpo" and cfg.get("max_pairs"):
        return int(cfg["max_pairs"] * 2 * cfg["seq_len"] * cfg.get("epochs", 1)), "at most"
    return None, "epochs over the data: unknown before a run"


def stage_layout(recipe, stage: str, target: Target) -> tuple[Layout, float | None]:
    """The stage's parallel layout on ``target`` and its time limit (flag, else nemo's Slurm time)."""
    cfg, engine = recipe.stages[stage], recipe.engine_of(stage)
    limit = target.time_limit_s
    if engine == "nemo":
        settings = recipe.engine_settings.get("nemo")
        res = settings.resources(stage)
        gpus, nodes = target.gpus or res.gpus_per_node, target.nodes or res.nodes
        if limit is None and settings.launcher == "slurm":
            limit = parse_time(res.time)
        lay = Layout("nemo", gpus * nodes, "ddp", res.tensor_parallel, res.pipeline_parallel, res.micro_batch_size)
        return lay, limit
    ranks = (target.gpus or 1) * (target.nodes or 1)
    return Layout("native", ranks, getattr(cfg, "parallel", "ddp")), limit


def plan_stage(recipe, stage: str, shapes: dict, target: Target, rates: list[Rate], measured_tokens: int | None = None):
    """One stage's plan: work, memory per rank, time and verdicts."""
    cfg_obj = recipe.stages[stage]
    cfg, kind = to_dict(cfg_obj), cfg_obj.kind
    layout, limit = stage_layout(recipe, stage, target)
    plan = StagePlan(stage, kind, layout, target.device, time_limit_s=limit)
    if kind not in MODELLED_KINDS and kind not in ("generate", "pairs", "release"):
        plan.tokens_note = "not modelled (evaluation)"
        return plan
    model_ref = cfg.get("student") or cfg.get("model")
    model = shapes.get(model_ref) if isinstance(model_ref, str) else None
    if model is None:
        plan.tokens_note = "model shape unknown offline"
        return plan
    teacher = shapes.get(cfg.get("teacher")) if kind == "distill" else None
    plan.params, plan.teacher_params = model.params(), teacher.params() if teacher else None
    cpu = target.device.key == "cpu"
    plan.tokens, plan.tokens_note = planned_tokens(kind, cfg, measured_tokens) if kind in MODELLED_KINDS else (None, "")
    work = stage_work(kind, cfg, model, plan.tokens or 0, teacher)
    plan.memory = stage_memory(kind, cfg, work, layout, cpu)
    if kind in MODELLED_KINDS and plan.tokens is not None:
        plan.flops = work.flops
        precision = cfg.get("matmul_precision", "highest")
        eff, overhead, plan.efficiency_source = pick_rate(rates, target.device, kind, precision)
        plan.efficiency = eff
        plan.time_s = overhead + work.flops / (layout.ranks * target.device.peak_flops * eff)
    plan.verdicts = verdicts(plan, kind, cfg, work)
    return plan


def verdicts(plan: StagePlan, kind: str, cfg: dict, work: Work) -> list[str]:
    """One line per way the stage does not fit: memory per rank, or the time limit."""
    out, dev, lay = [], plan.device, plan.layout
    cpu = dev.key == "cpu"
    room = dev.memory_gib - (0 if cpu else GPU_RESERVE_GIB)
    unit = "host RAM" if cpu else f"{dev.memory_gib:.0f} GiB GPUs"
    if plan.peak_gib is not None and room > 0 and plan.peak_gib > room:
        fix = _memory_fix(kind, cfg, work, lay, cpu, room)
        out.append(f"{plan.stage}: {plan.peak_gib:.0f} GiB per rank on {unit}: {fix}")
    if plan.time_limit_s and plan.time_s and plan.time_s > plan.time_limit_s:
        factor = math.ceil(plan.time_s / plan.time_limit_s)
        out.append(
            f"{plan.stage}: {plan.time_s / 3600:.1f} h exceeds the time limit of {plan.time_limit_s / 3600:.1f} h: "
            f"use {factor}x the GPUs ({lay.ranks * factor}), raise the limit, or let the job resume over "
            f"{factor} submissions"
        )
    return out


def _memory_fix(kind: str, cfg: dict, work: Work, lay: Layout, cpu: bool, room: float) -> str:
    """The smallest change that makes a stage fit: FSDP and/or more GPUs (native), more
    tensor parallel (nemo), or a smaller micro-batch."""

    def fits(layout: Layout, c: dict = cfg) -> bool:
        return stage_memory(kind, c, work, layout, cpu).total() / GIB <= room

    if lay.engine == "nemo":
        for tp in (2, 4, 8):
            if tp > lay.tensor_parallel and fits(replace(lay, tensor_parallel=tp)):
                return f"use tensor_parallel: {tp}" + (f" ({tp * lay.pipeline_parallel} GPUs per replica)")
        return "raise tensor_parallel / pipeline_parallel past 8, or shorten seq_len"
    options = []
    if lay.parallel == "ddp" and fits(replace(lay, parallel="fsdp")):
        options.append("use parallel: fsdp")
    for parallel in dict.fromkeys((lay.parallel, "fsdp")):
        more = next(
            (r for r in range(lay.ranks + 1, 4 * lay.ranks + 65) if fits(replace(lay, parallel=parallel, ranks=r))),
            None,
        )
        if more is not None:
            both = "parallel: fsdp and " if parallel != lay.parallel else ""
            options.append(f"{both}{more - lay.ranks} more GPUs")
            break
    if kind in TRAINING_KINDS and cfg.get("batch_size", 1) > 1:
        small = dict(cfg, batch_size=1, grad_accum=cfg.get("grad_accum", 1) * cfg["batch_size"])
        if fits(lay, small):
            options.append(f"batch_size: 1, grad_accum: {small['grad_accum']}")
    return " or ".join(options) if options else "does not fit at any layout tried: shorten seq_len or use nemo's TP/PP"


def plan_recipe(recipe, target: Target, rates: list[Rate] = (), measured_tokens: dict | None = None):
    """Every stage's plan, in the recipe's order."""
    shapes = model_shapes(recipe)
    measured_tokens = measured_tokens or {}
    return [plan_stage(recipe, s, shapes, target, list(rates), measured_tokens.get(s)) for s in recipe.stages]


def running_peaks(plans: list[StagePlan]) -> list[float | None]:
    """What a single-process pipeline's manifests report as peak memory: the process's peak
    so far (ru_maxrss only grows), i.e. the running maximum of the stages' own peaks."""
    out, top = [], 0.0
    for p in plans:
        if p.peak_gib is not None:
            top = max(top, p.peak_gib)
        out.append(top if p.peak_gib is not None else None)
    return out


def _num(x: float | None, unit: str = "") -> str:
    """1.2k, 3.4M, 8.0B, 5.6T... (base 1000)."""
    if x is None:
        return "-"
    for div, suffix in (
        (1e24, "Y"),
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "B"),
        (1e6, "M"),
        (1e3, "k"),
    ):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}" if x < 10 * GIB else f"{x / GIB:.1f}"


def _gpu_hours(h: float | None) -> str:
    return "-" if h is None else f"{h:,.0f}" if h >= 10 else f"{h:.2g}" if h >= 0.01 else "<0.01"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def format_plan(plans: list[StagePlan], target: Target) -> list[str]:
    """The plan as text: a header naming the device and its peak's source, a table, the
    memory split per rank, and the verdicts."""
    dev = target.device
    peak = (
        f"{dev.peak_flops / 1e12:.0f} TFLOP/s dense bf16" if dev.key != "cpu" else f"{dev.peak_flops / 1e9:.0f} GFLOP/s"
    )
    lines = [f"device: {dev.name} ({dev.memory_gib:.0f} GiB, {peak}; {dev.source})"]
    rows = [("stage", "kind", "layout", "params", "tokens", "FLOPs", "GiB/rank", "time", "GPU-h", "efficiency")]
    for p in plans:
        lay = p.layout
        where = (
            f"{lay.ranks}x {lay.parallel}"
            if lay.engine == "native"
            else (f"{lay.ranks}x tp{lay.tensor_parallel} pp{lay.pipeline_parallel}")
        )
        eff = f"{p.efficiency:.2g} {p.efficiency_source}" if p.efficiency is not None else p.tokens_note
        rows.append(
            (
                p.stage,
                p.kind,
                where,
                _num(p.params),
                _num(p.tokens),
                _num(p.flops),
                "-" if p.peak_gib is None else f"{p.peak_gib:.2f}" if p.peak_gib < 10 else f"{p.peak_gib:.1f}",
                _duration(p.time_s),
                _gpu_hours(p.gpu_hours),
                eff,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    lines.append(
        "memory per rank, GiB: weights + gradients + optimizer + activations (with checkpointing) "
        "+ logits + frozen teacher + runtime"
    )
    for p in plans:
        m = p.memory
        if m is None or p.kind not in MODELLED_KINDS:
            continue
        lines.append(
            f"  {p.stage}: {_gib(m.weights)} + {_gib(m.gradients)} + {_gib(m.optimizer)} + {_gib(m.activations)} "
            f"({_gib(m.activations_ckpt)}) + {_gib(m.logits)} + {_gib(m.teacher)} + {_gib(m.runtime)}"
        )
    problems = [v for p in plans for v in p.verdicts]
    lines.append("")
    lines += problems or ["every modelled stage fits its device and time limit"]
    return lines
