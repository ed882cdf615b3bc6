"""Comparison reports: one table of task/metric x model (value and 95% interval)
as text, Markdown and HTML, and a bar chart of each task's headline metric
(PNG beside the HTML and embedded in it, so the HTML stands alone)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path


def _rows(runs: list[tuple[str, dict]], headline_only: bool = False) -> list[tuple[str, str, list[dict | None]]]:
    """(task, metric, one cell per model) in first-seen order."""
    keys: list[tuple[str, str]] = []
    for _, r in runs:
        for task, t in r["tasks"].items():
            names = [t.get("headline")] if headline_only and t.get("headline") else list(t["metrics"])
            keys += [(task, m) for m in names if (task, m) not in keys]
    return [(task, m, [r["tasks"].get(task, {}).get("metrics", {}).get(m) for _, r in runs]) for task, m in keys]


def fmt_cell(cell: dict | None) -> str:
    if cell is None:
        return "-"
    v, (lo, hi) = cell["value"], cell["ci"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def text_table(runs: list[tuple[str, dict]]) -> str:
    """A plain aligned table for terminals."""
    header = ["task", "metric", "n"] + [label for label, _ in runs]
    rows = [
        [task, m, str(max((c or {}).get("n", 0) for c in cells))] + [fmt_cell(c) for c in cells]
        for task, m, cells in _rows(runs)
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)


def markdown(runs: list[tuple[str, dict]], chart: str | None = None) -> str:
    lines = ["# Evaluation report", ""]
    for label, r in runs:
        m = r["model"]
        lines.append(
            f"- **{label}**: {m.get('path') or m.get('name')} (hash {str(m.get('hash'))[:12]}), "
            f"suite {r['suite']['name']}, engine {r['engine'].get('engine') or r['engine'].get('name', '?')}, {r.get('wall_s', 0):.0f} s"
        )
    lines += ["", "Values with percentile-bootstrap 95% intervals over samples.", ""]
    lines.append("| task | metric | " + " | ".join(label for label, _ in runs) + " |")
    lines.append("|---|---|" + "---|" * len(runs))
    for task, m, cells in _rows(runs):
        lines.append(f"| {task} | {m} | " + " | ".join(fmt_cell(c) for c in cells) + " |")
    for label, r in runs:
        if r.get("missing"):
            gaps = ", ".join(
                f"{name} ({g['have']}/{g['of']})" if g.get("of") else name for name, g in r["missing"].items()
            )
            lines += ["", f"Not scored for {label} (scored from an incomplete completions file): {gaps}."]
    if chart:
        lines += ["", f"![headline metrics]({chart})"]
    return "\n".join(lines) + "\n"


def html_page(runs: list[tuple[str, dict]], png: bytes | None) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in runs)
    body = "".join(
        f"<tr><td>{esc(task)}</td><td>{esc(m)}</td>" + "".join(f"<td>{esc(fmt_cell(c))}</td>" for c in cells) + "</tr>"
        for task, m, cells in _rows(runs)
    )
    img = f'<img alt="headline metrics" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else ""
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
        f"<style>{style}</style></head><body><h1>Evaluation report</h1>"
        f"<p>Values with percentile-bootstrap 95% intervals over samples.</p>"
        f"<table><tr><th>task</th><th>metric</th>{head}</tr>{body}</table>{img}</body></html>\n"
    )


def bar_chart(runs: list[tuple[str, dict]], path: Path) -> bool:
    """Grouped bars: one group per task (its headline metric), one bar per model,
    whiskers at the interval. False when there is nothing to draw."""
    rows = [
        (t, m, cells)
        for t, m, cells in _rows(runs, headline_only=True)
        if any(c is not None and not math.isnan(c["value"]) for c in cells)
    ]
    if not rows:
        return False
    import matplotlib  # heavy: only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: as above, after the backend is chosen

    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.5 * len(rows) * len(runs)), 4.5))
    for k, (label, _) in enumerate(runs):
        xs, ys, err = [], [], [[], []]
        for i, (_, _, cells) in enumerate(rows):
            c = cells[k]
            if c is None or math.isnan(c["value"]):
                continue
            xs.append(i + (k - (len(runs) - 1) / 2) * width)
            ys.append(c["value"])
            err[0].append(max(0.0, c["value"] - c["ci"][0]))
            err[1].append(max(0.0, c["ci"][1] - c["value"]))
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{t}/{m}" for t, m, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (95% CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(runs: list[tuple[str, dict]], out_dir: Path, stem: str = "report") -> dict[str, Path]:
    """Write ``stem``.md, ``stem``.html and ``stem``.png (when there is something to plot)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png_path = out_dir / f"{stem}.png"
    has_png = bar_chart(runs, png_path)
    paths = {"md": out_dir / f"{stem}.md", "html": out_dir / f"{stem}.html"}
    paths["md"].write_text(markdown(runs, png_path.name if has_png else None))
    paths["html"].write_text(html_page(runs, png_path.read_bytes() if has_png else None))
    if has_png:
        paths["png"] = png_path
    return paths
