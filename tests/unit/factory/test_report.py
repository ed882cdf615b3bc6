"""factory.report: the run report is read from the artifacts in a run directory
(manifests, metrics.jsonl, importance.png, report.png, the release card) and
written as one HTML page with its images embedded, plus Markdown and an SVG."""

import base64
import json
import re

import matplotlib.pyplot as plt
import pytest

from factory.report import diagram_svg, loss_curves, write_report
from foundation.errors import FactoryError

PNG = b"\x89PNG\r\n\x1a\n" + b"not really a picture"
HOST = {"cpu": "Test CPU", "torch_threads": 2, "cpus": 4, "fp32_matmul_gflops": 50}
SOURCES = {"teacher": "hf HuggingFaceTB/SmolLM2-135M", "web": "dataset (odc-by)"}


def stage(run, name, kind, inputs, metrics=None, tokens=None, wall_s=1.0, files=None):
    """An artifact directory with a manifest shaped like the pipeline's."""
    d = run / name
    d.mkdir(parents=True)
    for rel, data in (files or {}).items():
        (d / rel).write_bytes(data) if isinstance(data, bytes) else (d / rel).write_text(data)
    manifest = {
        "format": 1,
        "kind": kind,
        "stage": name,
        "config_hash": "c" * 64,
        "inputs": {n: "h" * 64 for n in inputs.values()},
        "input_fields": inputs,
        "sources": {n: (f"stage {n}" if n not in SOURCES else SOURCES[n]) for n in inputs.values()},
        "tokens": tokens,
        "wall_s": wall_s,
        "host": HOST,
        "metrics": metrics or {},
        "files": {},
        "hash": "f" * 64,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


METRICS = (
    "\n".join(
        json.dumps(r)
        for r in [
            {"step": 1, "tokens": 100, "loss": 3.0},
            {"step": 2, "tokens": 200, "loss": 2.5},
            {"step": 2, "tokens": 200, "eval_kl": 0.9, "eval_loss": 2.7},
            {"step": 3, "tokens": 300, "loss": 2.0},
            {"step": 3, "tokens": 300, "eval_kl": 0.6},
        ]
    )
    + "\n\n"
)


@pytest.fixture
def run(tmp_path):
    """A finished run: prune -> distill -> evaluate -> gate, distill -> release; named so that
    directory order is not dependency order."""
    run = tmp_path / "runs" / "smoke"
    stage(run, "release", "release", {"model": "distill"}, files={"README.md": "# Card <script>x</script>\n"})
    stage(run, "gate", "gate", {"results": "evaluate"}, metrics={"passed": False, "verdict": "fail"})
    stage(
        run, "evaluate", "evaluate", {"model": "distill"}, files={"report.png": PNG, "report.md": "| gsm8k | 0.125 |\n"}
    )
    stage(
        run,
        "distill",
        "distill",
        {"student": "prune", "teacher": "teacher", "data": "web"},
        metrics={"kl_after": 0.123456, "loss_after": 2, "kl_before": 1.5, "steps": 3},
        tokens=12345,
        wall_s=61.6,
        files={"metrics.jsonl": METRICS},
    )
    stage(
        run,
        "prune",
        "prune",
        {"model": "teacher", "data": "web"},
        metrics={"params": 1000000},
        files={"importance.png": PNG},
    )
    (run / "half-done").mkdir()  # no manifest: not an artifact
    (run / ".cache").mkdir()
    stage(run / ".cache", "hidden", "prune", {})  # under a dot directory: never read
    return run


def test_write_report_in_dependency_order(run):
    paths = write_report(run)
    out = run / "report"
    assert paths == {"html": out / "report.html", "md": out / "report.md", "svg": out / "pipeline.svg"}
    md = paths["md"].read_text().splitlines()
    assert md[:4] == [
        "# Run report: smoke",
        "",
        "Ran on: Test CPU, 2 torch threads of 4 CPUs; fp32 matmul probe 50 GFLOP/s",
        "",
    ]
    table = md[md.index("| stage | kind | tokens | seconds | result |") + 2 :][:5]
    assert table == [
        "| prune | prune | - | 1 | params=1000000 |",
        "| distill | distill | 12,345 | 62 | kl_after=0.1235, loss_after=2 |",
        "| evaluate | evaluate | - | 1 |  |",
        "| gate | gate | - | 1 | verdict=fail |",
        "| release | release | - | 1 |  |",
    ]


def test_markdown_sections(run):
    md = write_report(run)["md"].read_text()
    assert "## Training curves\n\n![distill](loss-distill.png)" in md
    assert f"## Pruning importance (prune)\n\n![importance]({run / 'prune' / 'importance.png'})" in md
    assert f"## Evaluation (evaluate)\n\n![eval]({run / 'evaluate' / 'report.png'})\n\n| gsm8k | 0.125 |\n" in md
    assert "## Gate (gate)\n\nVerdict: **FAIL**" in md
    assert f"## Release (release)\n\nModel card: {run / 'release' / 'README.md'}" in md
    assert md.endswith("\n")


def test_html_embeds_images_and_escapes_text(run):
    paths = write_report(run)
    page = paths["html"].read_text()
    assert page.startswith("<!doctype html><meta charset='utf-8'><title>smoke</title>")
    assert paths["svg"].read_text() in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 3  # the distill loss curve, prune's importance, evaluate's chart
    assert base64.b64decode(embedded[0]) == (run / "report" / "loss-distill.png").read_bytes()
    assert [base64.b64decode(e) for e in embedded[1:]] == [PNG, PNG]
    assert "<h2>Gate (gate)</h2><p>Verdict: <b>FAIL</b></p>" in page
    assert "# Card &lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    assert "<tr><td>distill</td><td>distill</td><td>12,345</td><td>62</td>" in page


def test_a_passing_gate_and_another_output_directory(run, tmp_path):
    (run / "gate" / "manifest.json").write_text(
        (run / "gate" / "manifest.json").read_text().replace('"passed": false', '"passed": true')
    )
    paths = write_report(run, tmp_path / "elsewhere")
    assert paths["md"] == tmp_path / "elsewhere" / "report.md"
    assert "Verdict: **PASS**" in paths["md"].read_text()
    assert not (run / "report").exists()


def test_diagram_places_sources_left_and_stages_by_depth(run):
    order = ["prune", "distill", "evaluate", "gate", "release"]  # dependency order, as the report reads them
    svg = diagram_svg([json.loads((run / n / "manifest.json").read_text()) for n in order])
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" width="990" height="160"')  # 5 columns, 2 rows
    boxes = re.findall(r'<rect x="(\d+)" y="(\d+)"[^>]*fill="(#e\w\w)"', svg)
    labels = re.findall(r'font-weight="bold">([^<]+)</text><text[^>]*>([^<]+)</text>', svg)
    assert labels == [
        ("teacher", "source"),
        ("web", "source"),
        ("prune", "prune"),
        ("distill", "distill"),
        ("evaluate", "evaluate"),
        ("gate", "gate"),
        ("release", "release"),
    ]
    # column = 1 + the deepest input's column; a second box in a column goes below the first
    assert [(int(x), int(y)) for x, y, _ in boxes] == [
        (40, 24),
        (40, 92),
        (230, 24),
        (420, 24),
        (610, 24),
        (800, 24),
        (610, 92),
    ]
    assert [fill for _, _, fill in boxes] == ["#efe", "#efe"] + ["#eef"] * 5
    assert svg.count("<line ") == 8  # prune: 2 inputs, distill: 3, evaluate, gate, release: 1 each
    assert svg.endswith("</svg>")


def test_diagram_of_nothing_is_an_empty_picture():
    svg = diagram_svg([])
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" width="230" height="92"')
    assert "<rect" not in svg and svg.endswith("</svg>")


def test_loss_curves_plot_training_and_held_out_metrics(run, tmp_path, monkeypatch):
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or close(fig))
    m = {"_dir": run / "distill", "stage": "distill", "kind": "distill"}
    assert loss_curves(m, tmp_path / "c.png") is True
    (fig,) = figures
    (ax,) = fig.axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
    assert lines == {
        "train loss": ([100, 200, 300], [3.0, 2.5, 2.0]),
        "held-out loss": ([200], [2.7]),
        "held-out kl": ([200, 300], [0.9, 0.6]),
    }
    assert ax.get_title() == "distill (distill)"


def test_loss_curves_need_training_rows(run, tmp_path):
    assert loss_curves({"_dir": run / "prune", "stage": "prune", "kind": "prune"}, tmp_path / "a.png") is False
    (run / "prune" / "metrics.jsonl").write_text(json.dumps({"tokens": 1, "eval_loss": 1.0}) + "\n")
    assert loss_curves({"_dir": run / "prune", "stage": "prune", "kind": "prune"}, tmp_path / "b.png") is False
    assert not (tmp_path / "b.png").exists()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FactoryError, match="no such run directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty" / "half-done").mkdir(parents=True)
    with pytest.raises(FactoryError, match="no finished stage artifacts"):
        write_report(tmp_path / "empty")
