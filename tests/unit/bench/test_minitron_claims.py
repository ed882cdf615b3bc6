"""The claims bench's statistics: t-intervals over seeds, the paired difference, the verdict."""

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("minitron_claims", ROOT / "bench/minitron_claims.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def seed_result(kd: float, lm: float, acc_kd: list[float]) -> dict:
    loss = {"correct": 3.7, "kd_width": kd, "lm_width": lm, "kd_depth": kd + 0.5}
    loss |= {"kd_width_uncorrected": kd + 0.1, "kd_random_width": kd + 3.0}
    ids = [f"arc_easy/{i}" for i in range(len(acc_kd))]
    arc = {s: {"ids": ids, "acc": acc_kd, "acc_norm": acc_kd} for s in bench.STUDENTS}
    arc["lm_width"] = {"ids": ids, "acc": [0.0] * len(ids), "acc_norm": [0.0] * len(ids)}
    return {"loss": loss, "params": {"prune_width": 10, "prune_depth": 9}, "arc_easy": arc}


def test_interval_is_the_t_interval_over_seeds():
    iv = bench.interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # stdev of 1, 2, 3 is 1; t(0.975, 2) = 4.303
    assert iv["mean"] == 2.0 and iv["n"] == 3
    assert math.isclose(iv["ci"][0], 2.0 - half) and math.isclose(iv["ci"][1], 2.0 + half)
    assert all(math.isnan(x) for x in bench.interval([5.0])["ci"])  # one seed: no interval


def test_claims_are_paired_by_seed_and_judged_by_their_interval():
    # LM loss is worse than KD by 0.10, 0.12, 0.11: the paired difference is tight even though
    # the seeds themselves differ by a whole nat
    per_seed = {1: seed_result(4.0, 4.10, [1.0, 0.0]), 2: seed_result(5.0, 5.12, [1.0, 1.0])}
    per_seed[3] = seed_result(4.5, 4.61, [0.0, 1.0])
    rows = {r["paper_side"] + "/" + r["other_side"]: r for r in bench.summarize(per_seed)}
    b = rows["kd_width/lm_width"]
    diff = b["loss"]["other_minus_paper"]
    assert math.isclose(diff["mean"], 0.11) and diff["ci"][0] > 0 and b["holds"] == "yes"
    assert b["loss"]["paper"]["ci"][0] < 4.0  # the unpaired sides overlap widely
    assert math.isclose(b["arc_easy_acc"]["paper_minus_other"]["mean"], (0.5 + 1.0 + 0.5) / 3)
    boot = b["arc_easy_acc"]["paired_bootstrap_other_minus_paper"]
    assert boot["n"] == 6 and math.isclose(boot["delta"], -4 / 6)


def test_an_interval_across_zero_is_unclear():
    per_seed = {s: seed_result(4.0, 4.0 + d, [1.0]) for s, d in ((1, 0.2), (2, -0.2), (3, 0.05))}
    rows = bench.summarize(per_seed)
    assert [r["holds"] for r in rows if r["other_side"] == "lm_width"] == ["unclear"]


def test_the_record_is_json_with_means_per_seed():
    per_seed = {1: seed_result(4.0, 4.1, [1.0, 0.0])}
    record = bench.results_record(per_seed, bench.summarize(per_seed), 32768, None)
    back = json.loads(json.dumps(record))
    assert back["per_seed"]["1"]["arc_easy"]["kd_width"] == {"acc": 0.5, "acc_norm": 0.5, "n": 2}
    assert back["seeds"] == [1] and "cpu" in json.dumps(back["host"]).lower()
