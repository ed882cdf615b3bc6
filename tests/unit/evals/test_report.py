"""evals.report: the model comparison as a text table, Markdown, a standalone
HTML page and a bar chart of each task's headline metric."""

import base64
import math

from evals.report import bar_chart, fmt_cell, html_page, markdown, text_table, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def cell(value, lo, hi, n):
    return {"value": value, "ci": [lo, hi], "n": n}


def result(tasks, name="m", wall_s=12.4, missing=None):
    out = {
        "model": {"path": f"runs/{name}", "hash": "abcdef0123456789"},
        "suite": {"name": "quick"},
        "engine": {"engine": "hf"},
        "wall_s": wall_s,
        "tasks": tasks,
    }
    if missing:
        out["missing"] = missing
    return out


TEACHER = result(
    {
        "gsm8k": {
            "headline": "exact_match",
            "metrics": {"exact_match": cell(0.5, 0.25, 0.75, 8), "format": cell(1.0, 1.0, 1.0, 8)},
        },
        "ifeval": {"headline": "prompt_acc", "metrics": {"prompt_acc": cell(0.3333, 0.1, 0.6, 9)}},
    },
    name="teacher",
)
STUDENT = result(
    {"gsm8k": {"headline": "exact_match", "metrics": {"exact_match": cell(0.125, 0.0, 0.375, 8)}}},
    name="student",
    wall_s=3.0,
    missing={"ifeval": {"have": 4, "of": 9}, "bfcl": {}},
)
RUNS = [("teacher", TEACHER), ("student <b>", STUDENT)]


def test_fmt_cell():
    assert fmt_cell(None) == "-"
    assert fmt_cell(cell(0.5, 0.25, 0.75, 8)) == "0.500 [0.250, 0.750]"
    assert fmt_cell(cell(2 / 3, 0.61234, 0.7, 3)) == "0.667 [0.612, 0.700]"
    assert fmt_cell(cell(float("nan"), 0.0, 0.0, 0)) == "n/a"
    assert fmt_cell(cell(None, 0.0, 0.0, 0)) == "n/a"


def test_text_table_rows_in_first_seen_order_with_the_largest_n():
    assert text_table(RUNS).splitlines() == [
        "task    metric       n  teacher               student <b>",
        "gsm8k   exact_match  8  0.500 [0.250, 0.750]  0.125 [0.000, 0.375]",
        "gsm8k   format       8  1.000 [1.000, 1.000]  -",
        "ifeval  prompt_acc   9  0.333 [0.100, 0.600]  -",
    ]


def test_markdown_lists_models_table_gaps_and_chart():
    md = markdown(RUNS, chart="report.png")
    lines = md.splitlines()
    assert lines[:4] == [
        "# Evaluation report",
        "",
        "- **teacher**: runs/teacher (hash abcdef012345), suite quick, engine hf, 12 s",
        "- **student <b>**: runs/student (hash abcdef012345), suite quick, engine hf, 3 s",
    ]
    assert "| task | metric | teacher | student <b> |" in lines
    assert "|---|---|---|---|" in lines
    assert "| gsm8k | exact_match | 0.500 [0.250, 0.750] | 0.125 [0.000, 0.375] |" in lines
    assert "| ifeval | prompt_acc | 0.333 [0.100, 0.600] | - |" in lines
    assert "Not scored for student <b> (scored from an incomplete completions file): ifeval (4/9), bfcl." in lines
    assert lines[-1] == "![headline metrics](report.png)"
    assert md.endswith("\n")
    assert "![" not in markdown(RUNS)


def test_markdown_names_the_engine_by_name_when_it_has_no_engine_key():
    r = dict(TEACHER, engine={"name": "vllm"}, model={"name": "tiny", "hash": None})
    assert "- **t**: tiny (hash None), suite quick, engine vllm, 12 s" in markdown([("t", r)]).splitlines()


def test_html_escapes_and_embeds_the_chart():
    page = html_page(RUNS, PNG)
    assert page.startswith("<!doctype html>") and page.endswith("</html>\n")
    assert "<th>student &lt;b&gt;</th>" in page and "<b>" not in page.replace("<body>", "")
    assert "<tr><td>gsm8k</td><td>format</td><td>1.000 [1.000, 1.000]</td><td>-</td></tr>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    assert "<img" not in html_page(RUNS, None)


def test_bar_chart_draws_only_when_a_headline_has_a_value(tmp_path):
    path = tmp_path / "chart.png"
    assert bar_chart(RUNS, path) is True
    assert path.read_bytes()[:8] == PNG
    empty = [("x", result({"t": {"headline": "acc", "metrics": {"acc": cell(math.nan, 0, 0, 0)}}}))]
    assert bar_chart(empty, tmp_path / "none.png") is False
    assert not (tmp_path / "none.png").exists()


def test_write_report_writes_markdown_html_and_png(tmp_path):
    paths = write_report(RUNS, tmp_path / "out", stem="cmp")
    assert paths == {"md": tmp_path / "out/cmp.md", "html": tmp_path / "out/cmp.html", "png": tmp_path / "out/cmp.png"}
    png = paths["png"].read_bytes()
    assert png[:8] == PNG
    assert paths["md"].read_text() == markdown(RUNS, "cmp.png")
    assert paths["html"].read_text() == html_page(RUNS, png)


def test_write_report_without_anything_to_plot_has_no_png(tmp_path):
    runs = [("x", result({"t": {"headline": "acc", "metrics": {"acc": cell(math.nan, 0, 0, 0)}}}))]
    paths = write_report(runs, tmp_path)
    assert sorted(paths) == ["html", "md"]
    assert not (tmp_path / "report.png").exists()
    assert "| t | acc | n/a |" in paths["md"].read_text()
