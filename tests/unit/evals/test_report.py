"""evals.report: the model comparison as a text table, Markdown, a standalone
HTML page and a bar chart of each task's headline metric."""

import base64
import math

import matplotlib
import matplotlib.pyplot as plt
import pytest

from evals.report import (
    bar_chart,
    chance_levels,
    draw_bars,
    fmt_cell,
    html_page,
    markdown,
    metric_rows,
    table_rows,
    text_table,
    write_report,
)

matplotlib.use("Agg")

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


def test_text_table_rows_in_first_seen_order_with_each_models_n():
    assert text_table(RUNS).splitlines() == [
        "task    metric       chance  max_tokens  limit  teacher               n  student <b>           n",
        "gsm8k   exact_match  -       -           -      0.500 [0.250, 0.750]  8  0.125 [0.000, 0.375]  8",
        "gsm8k   format       -       -           -      1.000 [1.000, 1.000]  8  -                     -",
        "ifeval  prompt_acc   -       -           -      0.333 [0.100, 0.600]  9  -                     -",
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
    assert "| task | metric | chance | max_tokens | limit | teacher | n | student <b> | n |" in lines
    assert "|---|---|---|---|---|---|---|---|---|" in lines
    assert "| gsm8k | exact_match | - | - | - | 0.500 [0.250, 0.750] | 8 | 0.125 [0.000, 0.375] | 8 |" in lines
    assert "| ifeval | prompt_acc | - | - | - | 0.333 [0.100, 0.600] | 9 | - | - |" in lines
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
    assert (
        "<tr><td>gsm8k</td><td>format</td><td>-</td><td>-</td><td>-</td>"
        "<td>1.000 [1.000, 1.000]</td><td>8</td><td>-</td><td>-</td></tr>"
    ) in page
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
    assert "| t | acc | - | - | - | n/a | 0 |" in paths["md"].read_text()


# ------------------------------------------------ what a newcomer must be able to read


def mc_record(task, i, choices, acc):
    """A multiple-choice sample as stored: one log-likelihood per choice."""
    return {"task": task, "id": f"{task}/{i}", "metrics": {"acc": acc}, "details": {"loglikelihoods": [-1.0] * choices}}


def mc_run(n, accs, limit):
    """ARC-Easy on ``n`` items (four choices, every fourth item three), scored 0/1 by ``accs``."""
    samples = [mc_record("arc_easy", i, 3 if i % 4 == 3 else 4, accs[i]) for i in range(n)]
    value = sum(accs[:n]) / n
    return result(
        {
            "arc_easy": {
                "headline": "acc",
                "limit": limit,
                "sampling": None,
                "metrics": {"acc": cell(value, max(0.0, value - 0.1), min(1.0, value + 0.1), n)},
            },
            "gsm8k": {
                "headline": "exact_match",
                "limit": 12,
                "sampling": {"max_tokens": 192, "temperature": 0.0},
                "metrics": {"exact_match": cell(0.0, 0.0, 0.0, 12)},
            },
        }
    ) | {"samples": samples}


def test_chance_level_averages_each_items_one_over_its_choices():
    run = mc_run(8, [1.0] * 8, limit=8)
    # six items of four choices, two of three: (6 / 4 + 2 / 3) / 8
    assert chance_levels(run) == {"arc_easy": pytest.approx((6 / 4 + 2 / 3) / 8)}
    assert chance_levels(result({})) == {}  # generation tasks carry no choices


def test_table_shows_n_beside_every_score_zero_chance_and_caps():
    small = mc_run(12, [1.0, 0.0] * 6, limit=12)
    large = mc_run(570, [1.0, 0.0, 0.0, 0.0] * 143, limit=None)
    header, rows = table_rows([("student", small), ("SmolLM2-135M-Instruct", large)])
    assert header == ["task", "metric", "chance", "max_tokens", "limit", "student", "n", "SmolLM2-135M-Instruct", "n"]
    arc, gsm = rows
    # n = 12 reads differently from n = 570; chance: (9 / 4 + 3 / 3) / 12 and (428 / 4 + 142 / 3) / 570
    assert arc == ["arc_easy", "acc", "0.271", "-", "12/all", "0.500 [0.400, 0.600]", "12"] + [
        "0.251 [0.151, 0.351]",
        "570",
    ]
    # a zero is a visible value, and the generation cap and limit are shown
    assert gsm == ["gsm8k", "exact_match", "-", "192", "12", "0.000 [0.000, 0.000]", "12"] + [
        "0.000 [0.000, 0.000]",
        "12",
    ]
    text = text_table([("student", small)])
    assert "0.000 [0.000, 0.000]  12" in text and "0.271" in text


def test_caps_that_differ_between_runs_are_both_shown():
    runs = [("a", mc_run(8, [1.0] * 8, limit=8)), ("b", mc_run(6, [0.0] * 6, limit=6))]
    arc = table_rows(runs)[1][0]
    assert arc[2:5] == ["0.271/0.264", "-", "8/6"]  # (6/4 + 2/3) / 8 and (5/4 + 1/3) / 6
    assert arc[5:] == ["1.000 [0.900, 1.000]", "8", "0.000 [0.000, 0.100]", "6"]


def test_chart_writes_each_value_and_n_so_a_zero_bar_still_reads():
    runs = [("student", mc_run(12, [1.0, 0.0] * 6, limit=12))]
    fig, ax = plt.subplots()
    draw_bars(ax, runs, metric_rows(runs, headline_only=True))
    assert [t.get_text() for t in ax.texts] == ["0.500\nn=12", "0.000\nn=12"]
    plt.close(fig)
