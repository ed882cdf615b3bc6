"""bench/scale_gpu.py at tiny shapes on the CPU: the whole pipeline of the GPU bench
(matmul probe, importance, width prune, the factory's FSDP2 KD steps and the peer's
full-logit loop) runs and reports every figure; the fused loss equals the peer's KL."""

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from factory.training import dist

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("scale_gpu", ROOT / "bench/scale_gpu.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["scale_gpu"] = bench  # dataclasses look their module up there
_spec.loader.exec_module(bench)

RUN_KEYS = {"contender", "seq_len", "rows", "tokens_per_step", "step_s", "step_times_s", "tokens_per_s", "tflops",
            "mfu", "peak_gib", "planned_peak_gib", "losses", "oom"}  # fmt: skip


@pytest.fixture(scope="module")
def report():
    return bench.run(replace(bench.TINY, steps=2), torch.device("cpu"), seqs=(32,))


def test_the_report_has_every_figure_for_both_contenders(report):
    for key in ("device", "torch", "dtype", "matmul_peak_tflops", "teacher", "student", "importance", "prune",
                "kd_loss_agreement", "runs", "wall_s"):  # fmt: skip
        assert key in report, key
    assert report["matmul_peak_tflops"] > 0
    assert report["importance"]["tokens"] == bench.TINY.calib_tokens
    assert report["importance"]["tokens_per_s"] > 0 and 0 < report["importance"]["mfu"]
    assert [r["contender"] for r in report["runs"]] == [bench.FACTORY, bench.PEER]
    for r in report["runs"]:
        assert set(r) == RUN_KEYS
        assert r["rows"] * r["seq_len"] == r["tokens_per_step"] == bench.TINY.step_tokens
        assert len(r["step_times_s"]) == 2 and r["tokens_per_s"] > 0 and r["mfu"] > 0
        assert r["planned_peak_gib"] > 0
        assert len(r["losses"]) == bench.TINY.warmup + 2 and all(math.isfinite(x) and x > 0 for x in r["losses"])


def test_the_student_has_the_target_width_and_the_teacher_its_depth(report):
    s, t = report["student"], report["teacher"]
    target = bench.TINY.student
    assert (s["hidden_size"], s["ffn_hidden_size"]) == (target["hidden"], target["ffn"])
    assert (s["num_attention_heads"], s["num_query_groups"]) == (target["heads"], target["groups"])
    assert s["num_layers"] == t["num_layers"] == 2 and s["params"] < t["params"]


def test_both_contenders_train_the_same_student_on_the_same_batches(report):
    ours, peer = report["runs"]
    # the first step's loss is taken before any update: the same KL from both losses
    assert ours["losses"][0] == pytest.approx(peer["losses"][0], rel=1e-4)
    assert ours["losses"][-1] == pytest.approx(peer["losses"][-1], rel=1e-2)


def test_the_fused_loss_equals_the_peers_kl_on_the_same_logits(report):
    a = report["kd_loss_agreement"]
    assert a["fused_kl"] > 0 and a["rel_diff"] < 1e-5


def test_fsdp2_on_one_rank_shards_every_decoder_layer():
    scale = bench.TINY
    model = bench.build_model(bench.llama_config(scale.teacher), torch.device("cpu"), torch.float32)
    with bench.one_rank_group(torch.device("cpu")):
        bench.fsdp2(model, torch.device("cpu"))
        assert dist.is_sharded(model)
        assert not dist.is_sharded(model.lm_head) and not dist.is_sharded(model.model.embed_tokens)
    assert not torch.distributed.is_initialized()


def test_tiny_mode_prints_the_table_and_writes_only_where_told(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main(["--tiny", "--seqs", "32", "--steps", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fused KD vs F.kl_div" in text and text.count("tok/s") >= 2
    assert '"runs"' in out.read_text()
