"""``release``: an HF directory ready to publish, with a model card that says
where the model came from, what it scores against its teacher, and how to
make it again.

Lineage is read from the manifests: starting at the released model's
artifact, every input that is an earlier stage is followed (artifacts of one
run sit side by side), so the card lists each stage with its settings,
tokens, data and licences without the stage knowing the recipe."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from evals import report
from evals import results as res
from factory.pruning.arch import TARGET_KEYS
from factory.retention import Teacher, check_teacher, load_retention, retention_section
from factory.sources.models import resolve_path
from factory.stages.base import StageContext, StageResult, headline, register
from foundation.artifacts import read_manifest
from foundation.configs import field, require
from foundation.errors import FactoryError
from foundation.hashing import sha256_file

SKIP = {"manifest.json", "metrics.jsonl", "README.md"}


@dataclass
class ReleaseConfig:
    kind: str = field("release", help="stage kind")
    model: str = field(None, ref="model", help="the model to release (usually the last alignment stage)")
    results: str | None = field(None, ref="model", help="an evaluate stage whose scores go into the card")
    gate: str | None = field(None, ref="model", help="a gate stage whose verdict goes into the card")
    candidate: str | None = field(
        None, help="label of the released model in the evaluate stage (default: the model's stage name)"
    )
    baseline: str | None = field(None, help="label of the reference model (usually the teacher) in the evaluate stage")
    model_name: str | None = field(None, help="name in the card's title (default: the recipe's name)")
    license: str = field("apache-2.0", help="licence of the released weights (the teacher's terms apply)")
    max_new_tokens: int = field(512, help="generation_config.json default")
    retention: str | None = field(
        None, help="a retention curve JSON (bench/retention.py), relative to the recipe: the card's size table"
    )
    # derived in check_files, hashed with the config: a changed curve renders the card again
    retention_hash: str = dataclasses.field(
        init=False, default="", metadata={"help": "derived: sha256 of the retention file"}
    )

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.gate is None or self.results is not None, where, "gate", "a gate needs results too")
        require(self.max_new_tokens > 0, where, "max_new_tokens", "must be positive")

    def check_files(self, where: str, base: Path) -> None:
        """The retention file (relative to the recipe's directory ``base``) exists and holds
        a retention curve; its sha256 joins the config hash."""
        if self.retention is not None:
            path = resolve_path(self.retention, base)
            load_retention(path, f"{where}.retention")
            self.retention_hash = sha256_file(path)


def lineage(artifact: Path) -> list[dict]:
    """Manifests from the root sources to ``artifact``, each once, inputs first."""
    seen: dict[str, dict] = {}

    def visit(d: Path) -> None:
        m = read_manifest(d)
        if m is None or m["stage"] in seen:
            return
        for name in m.get("input_fields", {}).values():
            if (d.parent / name / "manifest.json").is_file():
                visit(d.parent / name)
        seen[m["stage"]] = m

    visit(artifact)
    return list(seen.values())


def _shape(config: dict) -> dict:
    keys = (
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
    )
    return {k: config.get(k) for k in keys}


def _params(model_dir: Path) -> int | None:
    total = 0
    names = set()
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k not in names:
                    names.add(k)
                    shape = st.get_slice(k).get_shape()
                    n = 1
                    for s in shape:
                        n *= s
                    total += n
    return total or None


def _fmt_tokens(n) -> str:
    if not n:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _stage_row(m: dict) -> str:
    cfg = m.get("config", {})
    metrics = m.get("metrics", {})
    shown = []
    for h in headline(m["kind"]):  # what the stage's kind declares sums it up
        pair = h.shown(metrics)
        if pair is not None:
            shown.append(f"{h.label} {pair[0]} -> {pair[1]}")
    inputs = ", ".join(sorted(set(m.get("input_fields", {}).values())))
    skip = {"max_tokens"} if cfg.get("epochs") is not None else set()
    settings = {
        k: cfg[k]
        for k in (
            "lr",
            "max_tokens",
            "epochs",
            "preference_loss",
            "ref_policy_kl_penalty",
            "target_params",
            *TARGET_KEYS,
            "kd_loss",
            "temperature",
        )
        if cfg.get(k) is not None and k not in skip
    }
    return (
        f"| {m['stage']} | {m['kind']} | {inputs} | {_fmt_tokens(m.get('tokens'))} | "
        f"{m.get('wall_s', 0):.0f} s | {'; '.join(shown) or '-'} | "
        f"{', '.join(f'{k}={v}' for k, v in settings.items()) or '-'} |"
    )


def _data_rows(chain: list[dict]) -> list[str]:
    """Every dataset any stage read (with its licence), and data generated on the way."""
    rows = {}
    for m in chain:
        for name, desc in m.get("sources", {}).items():
            if desc.startswith("dataset ("):
                rows[name] = desc[len("dataset (") : -1]
        if m.get("dataset"):
            rows[f"{m['stage']} (generated by the pipeline)"] = m["dataset"].get("licence", "unknown")
    return [f"| {k} | {v} |" for k, v in rows.items()]


def eval_rows(results_dir: Path, candidate: str, baseline: str | None) -> list[str]:
    """The card's evaluation rows: task, metric, n, the task's chance level (multiple choice)
    and generation cap (``max_tokens``) as the eval report shows them, then each model's score."""

    def load(label):
        p = results_dir / f"results-{label}.json"
        if not p.is_file():
            have = sorted(x.stem[len("results-") :] for x in results_dir.glob("results-*.json"))
            raise FactoryError(f"release: no results for {label!r} in {results_dir} (have: {', '.join(have)})")
        return res.load_verified(p)  # the card carries only numbers its samples give

    cand = load(candidate)
    base = load(baseline) if baseline else None
    caps = report.task_caps([(candidate, cand), *([(baseline, base)] if base else [])])

    def cell(x):
        return f"{x['value']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]" if x.get("ci") else f"{x['value']:.3f}"

    rows = []
    for task, t in cand["tasks"].items():
        chance, max_tokens, _ = caps.get(task, ("-", "-", "-"))
        for metric, v in t["metrics"].items():
            b = base["tasks"].get(task, {}).get("metrics", {}).get(metric) if base else None
            rows.append(
                f"| {task} | {metric} | {t.get('n', '')} | {chance} | {max_tokens} | {cell(v)} | "
                f"{cell(b) if b else '-'} |"
            )
    return rows


def model_card(
    ctx: StageContext, chain: list[dict], out: Path, cfg: ReleaseConfig, retention: dict | None = None
) -> str:
    """The README.md of the release: its sections in order, evaluation, gate and the
    retention curve (``retention``: the checked file's contents) only when configured."""
    top = chain[-1]
    teacher_desc = _teacher_desc(ctx, chain)
    config = json.loads((out / "config.json").read_text())
    params = _params(out)
    name = cfg.model_name or top.get("recipe", "model")
    recipe_file = Path(top.get("recipe_file", ""))
    recipe_hash = sha256_file(recipe_file)[:16] if recipe_file.is_file() else "unknown"
    lines = [
        *_card_intro(cfg.license, name, params, recipe_file),
        *_lineage_section(teacher_desc, chain),
        *_architecture_section(config, params),
        *_data_section(chain),
    ]
    if cfg.results:
        lines += _evaluation_section(ctx, cfg)
    if cfg.gate:
        lines += _gate_section(read_manifest(ctx.models["gate"]) or {})
    if retention is not None:
        lines += retention_section(retention, cfg.retention, cfg.retention_hash)
    lines += _closing_sections(name, recipe_file, recipe_hash)
    return "\n".join(x for x in lines if x is not None)


def _teacher_sources(ctx: StageContext, chain: list[dict]) -> list[str]:
    """The non-dataset sources of the chain's root stages (those with no earlier stage as input)."""
    roots = [
        m
        for m in chain
        if not any(
            (ctx.models["model"].parent / n / "manifest.json").is_file() for n in m.get("input_fields", {}).values()
        )
    ]
    return sorted({d for m in roots for n, d in m.get("sources", {}).items() if not d.startswith("dataset")})


def _teacher_desc(ctx: StageContext, chain: list[dict]) -> str:
    """The teacher as the card names it: its sources, or "unknown"."""
    return "; ".join(_teacher_sources(ctx, chain)) or "unknown"


def lineage_teacher(ctx: StageContext, chain: list[dict], params: int | None) -> Teacher:
    """The teacher of the chain for comparing with a retention file: the packaged or hub
    names (or local paths) of its sources, and its parameter count from the first stage that records one
    (a prune stage's ``params_before``) or, when no stage of the chain changes the shape,
    the released model's own ``params``."""
    names = set()
    for desc in _teacher_sources(ctx, chain):
        how, _, what = desc.partition(" ")
        if how == "packaged":
            names.add(what)
        elif how == "hub":
            repo = what.split("@")[0]
            names |= {repo, repo.rsplit("/", 1)[-1]}
        elif how == "local":
            local = what.split(" (")[0]
            names |= {local, Path(local).name}
    counts = [m["metrics"]["params_before"] for m in chain if "params_before" in m.get("metrics", {})]
    if not counts and not any(m["kind"] in ("prune", "distill") for m in chain):
        counts = [params] if params else []
    return Teacher(_teacher_desc(ctx, chain), frozenset(names), counts[0] if counts else None)


def _retention(ctx: StageContext, cfg: ReleaseConfig, chain: list[dict]) -> dict | None:
    """The configured retention file, checked (schema, unchanged since the recipe was
    loaded, the release's own teacher) before the card uses it; None when not configured."""
    if cfg.retention is None:
        return None
    where = f"stages.{ctx.name}.retention"
    path = resolve_path(cfg.retention, ctx.base)
    data = load_retention(path, where)
    if cfg.retention_hash and sha256_file(path) != cfg.retention_hash:
        raise FactoryError(f"{where}: {path} changed after the recipe was loaded; run again to use the new file")
    if not cfg.retention_hash:
        cfg.retention_hash = sha256_file(path)
    check_teacher(data, lineage_teacher(ctx, chain, _params(ctx.out_dir)), path, where)
    return data


def _card_intro(licence: str, name: str, params: int | None, recipe_file: Path) -> list[str]:
    """The front matter, the title and the one-sentence description."""
    return [
        "---",
        f"license: {licence}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [minitron, pruning, distillation, dpo]",
        "---",
        "",
        f"# {name}",
        "",
        f"A {_fmt_tokens(params)}-parameter instruct model made by the factory's recipe `{recipe_file.name}`: "
        f"teacher correction, Minitron pruning, logit distillation, SFT and preference optimisation."
        if params
        else f"A model made by the factory's recipe `{recipe_file.name}`.",
        "",
    ]


def _lineage_section(teacher_desc: str, chain: list[dict]) -> list[str]:
    """The teacher and one table row per stage of the chain."""
    return [
        "## Lineage",
        "",
        f"Teacher: {teacher_desc}.",
        "",
        "| stage | kind | inputs | tokens | time | result | settings |",
        "|---|---|---|---|---|---|---|",
        *[_stage_row(m) for m in chain],
        "",
    ]


def _architecture_section(config: dict, params: int | None) -> list[str]:
    """The released model's shape and, when known, its parameter count."""
    return [
        "## Architecture",
        "",
        "| | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in _shape(config).items()],
        f"| parameters | {params:,} |" if params else "",
        "",
    ]


def _data_section(chain: list[dict]) -> list[str]:
    """Every data source of the chain with its licence."""
    return ["## Data and licences", "", "| source | licence |", "|---|---|", *_data_rows(chain), ""]


def _evaluation_section(ctx: StageContext, cfg: ReleaseConfig) -> list[str]:
    """The evaluate stage's scores of the candidate and the baseline."""
    cand = cfg.candidate or cfg.model
    return [
        "## Evaluation",
        "",
        f"Scores with bootstrap 95% confidence intervals; `{cand}` is this model"
        + (f", `{cfg.baseline}` the reference." if cfg.baseline else ".")
        + " chance: the score of guessing among each item's choices (multiple choice only); "
        "max_tokens: the generation cap per answer (- for tasks scored by log-likelihood).",
        "",
        f"| task | metric | n | chance | max_tokens | {cand} | {cfg.baseline or '-'} |",
        "|---|---|---|---|---|---|---|",
        *eval_rows(ctx.models["results"], cand, cfg.baseline),
        "",
    ]


def _gate_section(g: dict) -> list[str]:
    """The gate stage's verdict (from its manifest ``g``), its rule and each metric's delta."""
    gm = g.get("metrics", {})
    gc = g.get("config", {})
    verdict = "PASS" if gm.get("passed") else "FAIL"
    return [
        "## Regression gate",
        "",
        f"Verdict: **{verdict}** ({gm.get('metrics_failed', '?')} of {gm.get('metrics_gated', '?')} metrics "
        f"regressed). `{gc.get('candidate')}` against `{gc.get('baseline')}`: a metric regresses when it "
        f"drops by more than its allowance (default {gc.get('default_max_drop')}"
        + (f"; per metric {gc.get('max_drop')}" if gc.get("max_drop") else "")
        + f") and a paired bootstrap finds the drop significant (alpha {gc.get('alpha')}).",
        "",
        "| task/metric | candidate - baseline |",
        "|---|---|",
        *[f"| {k[len('delta/') :]} | {v:+.3f} |" for k, v in gm.items() if k.startswith("delta/")],
        "",
    ]


def _closing_sections(name: str, recipe_file: Path, recipe_hash: str) -> list[str]:
    """How to use the model, how to make it again, and its limitations."""
    return [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{name}")',
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        'ids = tok.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,',
        '                              return_tensors="pt")',
        "print(tok.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))",
        "```",
        "",
        "## Reproduce",
        "",
        "```bash",
        f"factory run {recipe_file.name}",
        "```",
        "",
        f"Recipe sha256 (first 16): `{recipe_hash}`; the stage configs' hashes are in `lineage.json`.",
        "",
        "## Limitations",
        "",
        "A small model compressed on a small budget: it inherits its teacher's biases and errors and adds "
        "its own; check the scores above before relying on it.",
        "",
    ]


def _generation_config(out: Path, tok, cfg: ReleaseConfig) -> None:
    path = out / "generation_config.json"
    gen = json.loads(path.read_text()) if path.is_file() else {}
    gen.update(
        {
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            "max_new_tokens": cfg.max_new_tokens,
        }
    )
    if tok.bos_token_id is not None:
        gen["bos_token_id"] = tok.bos_token_id
    path.write_text(json.dumps(gen, indent=2) + "\n")


@register("release", ReleaseConfig, "an HF directory ready to publish, with a model card (lineage, scores, gate)")
def run(ctx: StageContext) -> StageResult:
    from transformers import AutoTokenizer  # heavy: only the release run needs it

    cfg: ReleaseConfig = ctx.config
    src = ctx.models["model"]
    for f in src.iterdir():
        if f.is_file() and f.name not in SKIP:
            shutil.copy2(f, ctx.out_dir / f.name)
    tok = AutoTokenizer.from_pretrained(ctx.out_dir)
    if not tok.chat_template:
        raise FactoryError(f"stages.{ctx.name}.model: {src} has no chat template; an instruct release needs one")
    _generation_config(ctx.out_dir, tok, cfg)
    chain = lineage(src)
    retention = _retention(ctx, cfg, chain)
    (ctx.out_dir / "lineage.json").write_text(
        json.dumps(
            [
                {
                    k: m.get(k)
                    for k in (
                        "stage",
                        "kind",
                        "hash",
                        "config_hash",
                        "inputs",
                        "input_fields",
                        "sources",
                        "tokens",
                        "wall_s",
                        "metrics",
                        "config",
                    )
                }
                for m in chain
            ],
            indent=1,
        )
        + "\n"
    )
    card = model_card(ctx, chain, ctx.out_dir, cfg, retention)
    (ctx.out_dir / "README.md").write_text(card)
    tokens = {m["stage"]: m.get("tokens") for m in chain}
    return StageResult(
        metrics={"params": _params(ctx.out_dir), "stages": len(chain)},
        extra={"lineage": [m["stage"] for m in chain], "tokens_per_stage": tokens},
    )
