"""Comparison reports: one table of task/metric x model (value and 95% interval)
as text, Markdown and HTML, and a bar chart of each task's headline metric
(PNG beside the HTML and embedded in it, so the HTML stands alone)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path


def metric_rows(runs: list[tuple[str, dict]], headline_only: bool = False) -> list[tuple[str, str, list[dict | None]]]:
    """(task, metric, one cell per model) in first-seen order."""
    keys: list[tuple[str, str]] = []
    for _, r in runs:
        for task, t in r["tasks"].items():
            names = [t.get("headline")] if headline_only and t.get("headline") else list(t["metrics"])
            keys += [(task, m) for m in names if (task, m) not in keys]
    return [(task, m, [r["tasks"].get(task, {}).get("metrics", {}).get(m) for _, r in runs]) for task, m in keys]


def fmt_cell(cell: dict | None) -> str:
    """A score with its interval: ``0.000 [0.000, 0.000]`` for a zero (never blank),
    ``-`` when the model has no such score, ``n/a`` when it has no value."""
    if cell is None:
        return "-"
    v, (lo, hi) = cell["value"], cell["ci"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_n(cell: dict | None) -> str:
    """How many samples a score rests on (``-`` when there is no score)."""
    return "-" if cell is None else str(cell.get("n", "?"))


def chance_levels(results: dict) -> dict[str, float]:
    """Task -> the score of guessing uniformly among each item's choices, averaged over
    its items: for multiple-choice tasks, whose records hold one log-likelihood per choice
    (ARC-Easy, with four choices on most items, about 0.25). Generation tasks have none."""
    inverse: dict[str, list[float]] = {}
    for rec in results.get("samples", ()):
        choices = (rec.get("details") or {}).get("loglikelihoods")
        if choices:
            inverse.setdefault(rec["task"], []).append(1.0 / len(choices))
    return {task: sum(v) / len(v) for task, v in inverse.items()}


def task_caps(runs: list[tuple[str, dict]]) -> dict[str, tuple[str, str, str]]:
    """Task -> (chance level, max tokens, limit) as shown; values that differ between
    runs are joined by '/'. A log-likelihood task samples nothing (max tokens '-');
    a task without a limit ran on all its samples."""

    def joined(values: list[str]) -> str:
        return "/".join(dict.fromkeys(values)) or "-"

    chances = [chance_levels(r) for _, r in runs]
    out = {}
    for task in dict.fromkeys(t for _, r in runs for t in r["tasks"]):
        entries = [r["tasks"][task] for _, r in runs if task in r["tasks"]]
        chance = joined([f"{c[task]:.3f}" for c in chances if task in c])
        tokens = joined([str(e["sampling"]["max_tokens"]) for e in entries if e.get("sampling")])
        limit = joined([str(e["limit"]) if e.get("limit") is not None else "all" for e in entries if "limit" in e])
        out[task] = (chance, tokens, limit)
    return out


CAP_COLUMNS = ["chance", "max_tokens", "limit"]
LEGEND = (
    "Values with percentile-bootstrap 95% intervals over the n samples scored. chance: the score of "
    "guessing among each item's choices (multiple choice only); max_tokens: the generation cap per "
    "answer; limit: the samples asked for (all: the whole set)."
)


def table_rows(runs: list[tuple[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """The comparison as a header and rows of text: task, metric, chance, max_tokens,
    limit, then each model's score followed by its own ``n``."""
    header = ["task", "metric", *CAP_COLUMNS]
    for label, _ in runs:
        header += [label, "n"]
    caps = task_caps(runs)
    rows = []
    for task, m, cells in metric_rows(runs):
        row = [task, m, *caps.get(task, ("-", "-", "-"))]
        for c in cells:
            row += [fmt_cell(c), fmt_n(c)]
        rows.append(row)
    return header, rows


def text_table(runs: list[tuple[str, dict]]) -> str:
    """A plain aligned table for terminals."""
    header, rows = table_rows(runs)
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
    header, rows = table_rows(runs)
    lines += ["", LEGEND, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
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
    header, rows = table_rows(runs)
    head = "".join(f"<th>{esc(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    img = f'<img alt="headline metrics" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else ""
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
        f"<style>{style}</style></head><body><h1>Evaluation report</h1>"
        f"<p>{esc(LEGEND)}</p>"
        f"<table><tr>{head}</tr>{body}</table>{img}</body></html>\n"
    )


def bar_chart(runs: list[tuple[str, dict]], path: Path) -> bool:
    """Grouped bars: one group per task (its headline metric), one bar per model,
    whiskers at the interval, each bar's value written above it (so a zero score,
    a bar of no height, still reads 0.000) and a task's chance level, where it has
    one, as a dashed line across its group. False when there is nothing to draw."""
    rows = [
        (t, m, cells)
        for t, m, cells in metric_rows(runs, headline_only=True)
        if any(c is not None and not math.isnan(c["value"]) for c in cells)
    ]
    if not rows:
        return False
    import matplotlib  # heavy: only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: as above, after the backend is chosen

    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.5 * len(rows) * len(runs)), 4.5))
    draw_bars(ax, runs, rows)
    chances = {}
    for _, r in runs:
        chances = {**chance_levels(r), **chances}
    for i, (task, _, _) in enumerate(rows):
        if task in chances:
            ax.hlines(chances[task], i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1, zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{t}/{m}" for t, m, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (95% CI); dashed: chance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def draw_bars(ax, runs: list[tuple[str, dict]], rows: list[tuple[str, str, list[dict | None]]]) -> None:
    """One bar series per model, labelled with its value and ``n``."""
    width = 0.8 / len(runs)
    for k, (label, _) in enumerate(runs):
        xs, ys, ns, err = [], [], [], [[], []]
        for i, (_, _, cells) in enumerate(rows):
            c = cells[k]
            if c is None or math.isnan(c["value"]):
                continue
            xs.append(i + (k - (len(runs) - 1) / 2) * width)
            ys.append(c["value"])
            ns.append(fmt_n(c))
            err[0].append(max(0.0, c["value"] - c["ci"][0]))
            err[1].append(max(0.0, c["ci"][1] - c["value"]))
        bars = ax.bar(xs, ys, width, yerr=err, capsize=2, label=label)
        ax.bar_label(bars, labels=[f"{y:.3f}\nn={n}" for y, n in zip(ys, ns)], fontsize=6, padding=2)


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
