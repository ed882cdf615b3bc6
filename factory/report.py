"""``factory report RUN_DIR``: one HTML page (and Markdown) about a run: the
pipeline as a diagram, loss curves of every training stage, the pruning
importance plots, the eval comparison chart and the release's card.

Everything is read from the run's artifacts (manifests, metrics.jsonl,
importance.png, report.png); the page embeds its images, so it can be mailed
or attached to a CI job as one file."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from factory.stages.base import headline_curves
from foundation import host
from foundation.artifacts import read_manifest
from foundation.errors import FactoryError


def _artifacts(run_dir: Path) -> list[dict]:
    found = []
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = read_manifest(d)
        if m is not None:
            m["_dir"] = d
            found.append(m)
    order: list[dict] = []
    names = {m["stage"]: m for m in found}

    def visit(m):
        if m in order:
            return
        for n in m.get("input_fields", {}).values():
            if n in names:
                visit(names[n])
        order.append(m)

    for m in found:
        visit(m)
    return order


def diagram_svg(stages: list[dict]) -> str:
    """Stages as boxes in dependency order, arrows from each input; sources on the left."""
    sources = []
    for m in stages:
        for n, desc in m.get("sources", {}).items():
            if not desc.startswith("stage") and n not in sources:
                sources.append(n)
    cols = {n: 0 for n in sources}
    for m in stages:
        ins = [cols.get(n, 0) for n in m.get("input_fields", {}).values()]
        cols[m["stage"]] = 1 + max(ins, default=0)
    rows: dict[int, int] = {}
    pos = {}
    for name, c in cols.items():
        pos[name] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    w, h, gx, gy = 150, 44, 40, 24
    width = (max(cols.values(), default=0) + 1) * (w + gx) + gx
    height = max(rows.values(), default=1) * (h + gy) + gy
    kinds = {m["stage"]: m["kind"] for m in stages}

    def box(name):
        c, r = pos[name]
        return gx + c * (w + gx), gy + r * (h + gy)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12"><defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
    ]
    for m in stages:
        x2, y2 = box(m["stage"])
        for n in set(m.get("input_fields", {}).values()):
            if n in pos:
                x1, y1 = box(n)
                parts.append(
                    f'<line x1="{x1 + w}" y1="{y1 + h / 2}" x2="{x2}" y2="{y2 + h / 2}" stroke="#555" '
                    'marker-end="url(#a)"/>'
                )
    for name in pos:
        x, y = box(name)
        fill = "#eef" if name in kinds else "#efe"
        label = html.escape(name)
        sub = html.escape(kinds.get(name, "source"))
        parts.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="#447"/>'
            f'<text x="{x + w / 2}" y="{y + 18}" text-anchor="middle" font-weight="bold">{label}</text>'
            f'<text x="{x + w / 2}" y="{y + 34}" text-anchor="middle" fill="#555">{sub}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def loss_curves(m: dict, path: Path) -> bool:
    """Training loss and held-out metrics against tokens, from the stage's metrics.jsonl."""
    f = m["_dir"] / "metrics.jsonl"
    if not f.is_file():
        return False
    rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    if not train:
        return False
    import matplotlib  # heavy: only the curves need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # likewise (after the backend is chosen)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    for key in headline_curves():  # the held-out metrics stage kinds declare as headline curves
        pts = [(r["tokens"], r[key]) for r in evals if key in r]
        if pts:
            ax.plot(*zip(*pts), "o-", lw=1.5, label=key.replace("eval_", "held-out "))
    ax.set_xlabel("tokens")
    ax.set_title(f"{m['stage']} ({m['kind']})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _img(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" style="max-width:100%">'


def _summary_row(m: dict) -> tuple[str, ...]:
    metrics = m.get("metrics", {})
    keys = [k for k in metrics if k.endswith("_after") or k in ("pairs", "params", "verdict")][:4]
    shown = ", ".join(f"{k}={metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys)
    tokens = m.get("tokens")
    return (m["stage"], m["kind"], f"{tokens:,}" if tokens else "-", f"{m.get('wall_s', 0):.0f}", shown)


def write_report(run_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Write the run's report (report.html, report.md, pipeline.svg and the loss curves) into
    ``out`` (default RUN_DIR/report) and return the paths of the page, the Markdown and the diagram."""
    run_dir = Path(run_dir)
    stages = _finished_stages(run_dir)
    out = Path(out or run_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    svg = diagram_svg(stages)
    (out / "pipeline.svg").write_text(svg)
    hosts = sorted({host.one_line(m["host"]) for m in stages if m.get("host")})
    ran_on = f"Ran on: {'; '.join(hosts)}" if hosts else ""
    page, md = _overview(run_dir.name, ran_on, svg, stages)
    for page_part, md_part in [_curves_section(stages, out), *(_stage_sections(m) for m in stages)]:
        page += page_part
        md += md_part
    (out / "report.html").write_text("\n".join(page))
    (out / "report.md").write_text("\n".join(md) + "\n")
    return {"html": out / "report.html", "md": out / "report.md", "svg": out / "pipeline.svg"}


def _finished_stages(run_dir: Path) -> list[dict]:
    """The manifests of the run's finished stages in dependency order; an error when there are none."""
    if not run_dir.is_dir():
        raise FactoryError(f"{run_dir}: no such run directory")
    stages = _artifacts(run_dir)
    if not stages:
        raise FactoryError(f"{run_dir}: no finished stage artifacts (is this a run dir, e.g. runs/<recipe name>?)")
    return stages


def _overview(name: str, ran_on: str, svg: str, stages: list[dict]) -> tuple[list[str], list[str]]:
    """The report's head as (HTML lines, Markdown lines): title, hosts, pipeline diagram and stage table."""
    md = [
        f"# Run report: {name}",
        "",
        *([ran_on, ""] if ran_on else []),
        "![pipeline](pipeline.svg)",
        "",
        "| stage | kind | tokens | seconds | result |",
        "|---|---|---|---|---|",
    ]
    md += ["| " + " | ".join(_summary_row(m)) + " |" for m in stages]
    page = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style>",
        f"<h1>Run report: {html.escape(name)}</h1>",
        *([f"<p>{html.escape(ran_on)}</p>"] if ran_on else []),
        "<h2>Pipeline</h2>",
        svg,
        "<h2>Stages</h2><table><tr><th>stage</th><th>kind</th><th>tokens</th><th>seconds</th><th>result</th></tr>",
    ]
    page += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _summary_row(m)) + "</tr>" for m in stages]
    page.append("</table>")
    return page, md


def _curves_section(stages: list[dict], out: Path) -> tuple[list[str], list[str]]:
    """The training curves of every stage with a metrics log, drawn into ``out``:
    (HTML lines, Markdown lines), both empty when no stage trained."""
    curves = [m for m in stages if loss_curves(m, out / f"loss-{m['stage']}.png")]
    if not curves:
        return [], []
    page = ["<h2>Training curves</h2>"]
    md = ["", "## Training curves", ""]
    for m in curves:
        page.append(_img(out / f"loss-{m['stage']}.png"))
        md.append(f"![{m['stage']}](loss-{m['stage']}.png)")
    return page, md


def _stage_sections(m: dict) -> tuple[list[str], list[str]]:
    """What one stage adds below the curves, as (HTML lines, Markdown lines): its pruning
    importance plot, its evaluation chart and table, a gate's verdict, a release's model card."""
    d = m["_dir"]
    page: list[str] = []
    md: list[str] = []
    if (d / "importance.png").is_file():
        page += [f"<h2>Pruning importance ({html.escape(m['stage'])})</h2>", _img(d / "importance.png")]
        md += ["", f"## Pruning importance ({m['stage']})", "", f"![importance]({d / 'importance.png'})"]
    if (d / "report.png").is_file():
        page += [f"<h2>Evaluation ({html.escape(m['stage'])})</h2>", _img(d / "report.png")]
        md += ["", f"## Evaluation ({m['stage']})", "", f"![eval]({d / 'report.png'})"]
        if (d / "report.md").is_file():
            md += ["", (d / "report.md").read_text()]
    if m["kind"] == "gate":
        verdict = "PASS" if m.get("metrics", {}).get("passed") else "FAIL"
        page.append(f"<h2>Gate ({html.escape(m['stage'])})</h2><p>Verdict: <b>{html.escape(str(verdict))}</b></p>")
        md += ["", f"## Gate ({m['stage']})", "", f"Verdict: **{verdict}**"]
    if m["kind"] == "release" and (d / "README.md").is_file():
        page += [
            f"<h2>Release ({html.escape(m['stage'])})</h2>",
            f"<pre style='white-space:pre-wrap'>{html.escape((d / 'README.md').read_text())}</pre>",
        ]
        md += ["", f"## Release ({m['stage']})", "", f"Model card: {d / 'README.md'}"]
    return page, md
