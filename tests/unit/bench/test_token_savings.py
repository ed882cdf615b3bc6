"""The token-savings bench: reading tokens-to-match off a scratch curve, the verdict, the
recipe it runs (minitron_claims' stages at a constant rate, log-spaced evals), and the whole
line end to end on a tiny random Llama."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from factory.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("token_savings", ROOT / "bench/token_savings.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["token_savings"] = bench  # its dataclass looks its module up while being defined
_spec.loader.exec_module(bench)

SCRATCH = [(0, 6.0), (1000, 5.0), (10000, 4.0), (100000, 3.0)]


def test_a_loss_on_an_evaluated_point_takes_its_tokens():
    assert bench.tokens_to_reach(SCRATCH, 4.0) == {"tokens": 10000.0, "bound": "="}


def test_between_points_the_curve_is_linear_in_log_tokens():
    reach = bench.tokens_to_reach(SCRATCH, 3.5)  # halfway in loss: halfway between 1e4 and 1e5 in log
    assert reach["bound"] == "=" and math.isclose(reach["tokens"], math.sqrt(1e4 * 1e5))
    reach = bench.tokens_to_reach(SCRATCH, 4.75)  # a quarter of the way from 1e3 to 1e4
    assert math.isclose(reach["tokens"], 10**3.25)


def test_never_reached_is_a_lower_bound_at_the_largest_budget():
    assert bench.tokens_to_reach(SCRATCH, 2.5) == {"tokens": 100000.0, "bound": ">="}
    rows = bench.savings([(0, 7.0), (1000, 2.5)], {"scratch_lm": SCRATCH})
    assert rows[0]["scratch_lm"] == {"tokens": 100000.0, "bound": ">=", "ratio": 100.0}


def test_a_student_worse_than_the_scratch_start_has_a_ratio_below_one():
    # from the 0-token point to the first eval, linear in tokens: 5.5 is halfway from 6.0 to 5.0
    rows = bench.savings([(0, 7.0), (4096, 5.5), (8192, 6.5)], {"scratch_lm": SCRATCH})
    assert [r["budget"] for r in rows] == [4096, 8192]  # the student's step 0 is no budget
    assert math.isclose(rows[0]["scratch_lm"]["tokens"], 500.0)
    assert math.isclose(rows[0]["scratch_lm"]["ratio"], 500 / 4096)
    assert rows[1]["scratch_lm"] == {"tokens": 0.0, "bound": "=", "ratio": 0.0}  # worse than random init


def test_the_first_crossing_counts_on_a_noisy_curve():
    noisy = [(1000, 5.0), (2000, 4.0), (4000, 4.5), (8000, 3.0)]
    assert bench.tokens_to_reach(noisy, 4.0)["tokens"] == 2000.0


def test_verdict_needs_ten_x_measured_and_says_when_bounds_leave_it_open():
    def rows(*reaches):
        return [{"budget": 1000 * (i + 1), "scratch_lm": r} for i, r in enumerate(reaches)]

    exact, bound = {"bound": "=", "ratio": 4.0}, {"bound": ">=", "ratio": 8.0}
    assert bench.verdict(rows(exact, {"bound": ">=", "ratio": 12.0}), "scratch_lm")["at_least_10x"] == "yes"
    assert bench.verdict(rows(exact, exact), "scratch_lm")["at_least_10x"] == "no"
    v = bench.verdict(rows(exact, bound), "scratch_lm")
    assert v == {"max_ratio": 8.0, "bound": ">=", "at_budget": 2000, "at_least_10x": "unknown"}


def test_eval_points_are_whole_steps_log_spaced_up_to_the_budget():
    assert bench.eval_points(65536, 1024, 8) == [1024, 2048, 3072, 6144, 11264, 20480, 35840, 65536]
    assert bench.eval_points(4096, 1024, 8) == [1024, 2048, 3072, 4096]  # fewer where steps coincide
    # the scratch runs get the student's density per doubling: 8 points over 6 doublings, 11 over 9
    assert bench.scratch_point_count(bench.Settings(), 1024) == 11
    steps = [t // 1024 for t in bench.eval_points(524288, 1024, 11)]
    ratios = [b / a for a, b in zip(steps[2:], steps[3:])]
    assert steps[0] == 1 and steps[-1] == 512 and all(1.7 < r < 2.2 for r in ratios)


def test_the_recipe_is_minitron_claims_student_at_a_constant_rate(tmp_path):
    rnd = tmp_path / "random"
    rnd.mkdir()
    (rnd / "config.json").write_text('{"model_type": "llama"}')
    spec = bench.recipe(bench.Settings(), str(rnd))
    claims = bench.claims.recipe(32768, 1, None)["stages"]
    assert spec["stages"]["correct"] == claims["correct"] and spec["stages"]["prune_width"] == claims["prune_width"]
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(spec))
    recipe = load_recipe(path)
    student, kd, lm = (recipe.stages[s] for s in ("student", "scratch_kd", "scratch_lm"))
    assert (student.kind, kd.kind, lm.kind) == ("distill", "distill", "correct")
    assert (student.max_tokens, kd.max_tokens, lm.max_tokens) == (65536, 524288, 524288)
    assert student.min_lr_ratio == kd.min_lr_ratio == lm.min_lr_ratio == 1.0
    assert (student.lr, kd.lr, lm.lr) == (claims["kd_width"]["lr"], 1e-3, 1e-3)
    for key in ("seq_len", "batch_size", "eval_tokens", "warmup_ratio"):  # alike, and as minitron_claims has them
        assert getattr(student, key) == getattr(kd, key) == getattr(lm, key) == claims["kd_width"][key]
    assert student.eval_at_tokens == bench.eval_points(65536, 1024, 8)
    assert kd.eval_at_tokens == lm.eval_at_tokens == bench.eval_points(524288, 1024, 11)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The whole bench on a tiny random Llama: 1,024 student tokens, 2,048 scratch tokens."""
    tmp = tmp_path_factory.mktemp("token_savings")
    args = ["--shapes", "tiny", "--student-tokens", "1024", "--scratch-tokens", "2048", "--points", "3"]
    args += ["--correct-tokens", "512", "--runs-dir", str(tmp / "runs"), "--out", str(tmp / "out" / "ts.json")]
    return tmp, args, bench.main(args)


def test_end_to_end_curves_on_the_same_held_out_blocks(tiny):
    tmp, _, record = tiny
    curves = {n: [(p["tokens"], p["loss"]) for p in c] for n, c in record["curves"].items()}
    assert [t for t, _ in curves["student"]] == [0, 256, 512, 1024]  # 256 tokens a step: steps 1, 2, 4
    assert [t for t, _ in curves["scratch_kd"]] == [t for t, _ in curves["scratch_lm"]] == [0, 256, 512, 1024, 2048]
    # one random init, one set of held-out blocks: the two scratch runs start at the same loss
    assert math.isclose(curves["scratch_kd"][0][1], curves["scratch_lm"][0][1], rel_tol=1e-5)
    assert curves["scratch_lm"][-1][1] < curves["scratch_lm"][0][1]
    assert [r["budget"] for r in record["savings"]] == [256, 512, 1024]
    assert record["settings"]["shapes"] == "tiny" and "cpu" in json.dumps(record["host"]).lower()
    assert json.loads((tmp / "out" / "ts.json").read_text()) == json.loads(json.dumps(record))


def test_end_to_end_rerun_is_cached(tiny, capfd):
    tmp, args, record = tiny
    stamps = {p: p.stat().st_mtime_ns for p in (tmp / "runs").glob("*/*/model.safetensors")}
    again = bench.main(args)
    assert again["curves"] == json.loads(json.dumps(record["curves"]))
    assert stamps and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    err = capfd.readouterr().err
    assert all(f"{s}: cached" in err for s in ("correct", "prune_width", "student", "scratch_kd", "scratch_lm"))
