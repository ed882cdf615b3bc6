"""The resource planner's arithmetic against hand-computed answers and real models'
parameter counts, its verdicts, its calibration from manifests, and `factory plan
--resources` / `factory calibrate` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory import planner
from factory.cli import main
from factory.pruning.arch import Shape
from factory.recipe import load_recipe
from factory.sources.models import KNOWN_HUB_CONFIGS, PACKAGED_MODELS

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted([*ROOT.glob("recipes/*.yaml"), *ROOT.glob("recipes/paper/*.yaml")])

# a 2-layer model whose every number below is worked out by hand
TWO_LAYER = Shape(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=128,
    num_attention_heads=4,
    num_query_groups=2,
    head_dim=16,
    vocab_size=100,
    tied=True,
)


@pytest.mark.parametrize(
    "config",
    [
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=259,
            tie_word_embeddings=True,
        ),
        dict(
            num_hidden_layers=3,
            hidden_size=48,
            intermediate_size=96,
            num_attention_heads=6,
            num_key_value_heads=3,
            vocab_size=300,
            tie_word_embeddings=False,
        ),
        dict(
            num_hidden_layers=1,
            hidden_size=32,
            intermediate_size=80,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=24,
            vocab_size=50,
            tie_word_embeddings=False,
        ),
    ],
)
def test_param_count_equals_the_real_hf_model(config):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**config))
    assert planner.param_count({"model_type": "llama", **config}) == sum(p.numel() for p in model.parameters())


def test_param_counts_of_published_configs():
    assert planner.param_count(PACKAGED_MODELS["smollm2-135m-instruct"].config) == 134_515_008
    llama = KNOWN_HUB_CONFIGS["meta-llama/Llama-3.1-8B"]
    assert planner.param_count(llama) == 8_030_261_248
    # the paper's 4B width student: hidden 3072, MLP 9216, heads, groups and layers kept
    assert planner.param_count({**llama, "hidden_size": 3072, "intermediate_size": 9216}) == 4_512_746_496


def test_two_layer_model_by_hand():
    # attention 64*64 + 2*64*32 + 64*64 = 12,288; MLP 3*64*128 = 24,576; norms 128 -> 36,992 a layer
    assert TWO_LAYER.params() == 2 * 36_992 + 100 * 64 + 64 == 80_448
    assert planner.matmul_params(TWO_LAYER) == 80_448  # tied: the embedding is also the LM head
    # forward 2N + 2 L s d with s = 8, d = 64; training three times that
    assert planner.forward_flops(TWO_LAYER, 8) == 2 * 80_448 + 2 * 2 * 8 * 64
    assert planner.train_flops(TWO_LAYER, 8) == 6 * 80_448 + 6 * 2 * 8 * 64 == 488_832
    work = planner.stage_work("correct", {"seq_len": 8, "batch_size": 4, "eval_tokens": 0}, TWO_LAYER, 320)
    assert work.flops == 320 * 488_832
    # every held-out eval (before, after and one per eval_at_tokens point) is a forward over eval_tokens
    cfg = {"seq_len": 8, "batch_size": 4, "eval_tokens": 16, "eval_at_tokens": [32, 64, 128]}
    work = planner.stage_work("correct", cfg, TWO_LAYER, 320)
    assert work.flops == 320 * 488_832 + (2 + 3) * 16 * planner.forward_flops(TWO_LAYER, 8)


def test_memory_components_by_hand():
    cfg = {"seq_len": 8, "batch_size": 4, "dtype": "float32", "loss_chunk": 1024}
    work = planner.Work(TWO_LAYER, 32, 0.0)
    mem = planner.stage_memory("correct", cfg, work, planner.Layout(), cpu=False)
    assert (mem.weights, mem.gradients, mem.optimizer) == (4 * 80_448, 4 * 80_448, 8 * 80_448)
    # (4h + 3d + 3 d_kv + 4f) = 256 + 192 + 96 + 512 = 1,056 elements a token a layer; 32 tokens, fp32
    layer = 1_056 * 32 * 4
    assert mem.activations == 2 * layer
    assert mem.activations_ckpt == 2 * 32 * 64 * 4 + layer  # each layer's input, one layer recomputed
    assert mem.logits == 3 * 32 * 100 * 4  # one chunk (all 32 tokens) of fp32 logits, three buffers
    assert mem.teacher == mem.runtime == 0
    bf16 = planner.stage_memory("correct", {**cfg, "dtype": "bfloat16"}, work, planner.Layout("nemo", 4), cpu=False)
    # bf16-mixed: 2 bytes of weights, 4 of main grads, 12 of master + moments over 4 data-parallel ranks
    assert (bf16.weights, bf16.gradients, bf16.optimizer) == (2 * 80_448, 4 * 80_448, 3 * 80_448)
    on_cpu = planner.stage_memory("correct", cfg, work, planner.Layout(), cpu=True)
    assert on_cpu.total() - mem.total() == pytest.approx(planner.CPU_RUNTIME_GIB * planner.GIB)


def test_fsdp_shards_only_the_decoder_layers():
    cfg = {"seq_len": 8, "batch_size": 4, "dtype": "float32"}
    work = planner.Work(TWO_LAYER, 32, 0.0)
    mem = planner.stage_memory("correct", cfg, work, planner.Layout("native", 2, "fsdp"), cpu=False)
    kept = 6_400 + 64 + 2 * 36_992 / 2  # embedding and final norm whole, the layers halved
    assert mem.weights == pytest.approx(4 * kept)
    assert mem.activations == 2 * 1_056 * 16 * 4  # two rows of the four on each rank


def test_distill_adds_the_frozen_teacher():
    teacher = Shape.from_config(KNOWN_HUB_CONFIGS["meta-llama/Llama-3.1-8B"])
    student = Shape.from_config(
        {**KNOWN_HUB_CONFIGS["meta-llama/Llama-3.1-8B"], "hidden_size": 3072, "intermediate_size": 9216}
    )
    cfg = {"seq_len": 4096, "batch_size": 1, "eval_tokens": 0}
    work = planner.stage_work("distill", cfg, student, 1000, teacher)
    assert work.flops == 1000 * (planner.train_flops(student, 4096) + planner.forward_flops(teacher, 4096))


def _width_recipe(*overrides):
    return load_recipe(ROOT / "recipes/paper/llama31-minitron-4b-width.yaml", list(overrides))


def test_verdicts_for_memory_and_time_limit():
    target = planner.Target(planner.GPUS["h100-80gb"])
    plans = {p.stage: p for p in planner.plan_recipe(_width_recipe(), target)}
    assert plans["correct"].verdicts == [
        "correct: 143.5 h exceeds the time limit of 72.0 h: use 2x the GPUs (64), raise the limit, "
        "or let the job resume over 2 submissions"
    ]
    # sft runs natively on one GPU: 8 sequences of 4096 tokens of a 4.5B model do not fit
    (line,) = plans["sft"].verdicts
    assert line.startswith("sft: 161 GiB per rank on 80 GiB GPUs: ")
    assert "batch_size: 1, grad_accum: 128" in line
    native = planner.plan_recipe(_width_recipe("engine=native"), planner.Target(planner.GPUS["h200"], gpus=8))
    correct = next(p for p in native if p.stage == "correct")
    assert correct.verdicts[0].startswith("correct: 148 GiB per rank on 140 GiB GPUs: use parallel: fsdp or ")


def _fake_run(root: Path, tokens: int, wall: float, stage: str = "correct") -> None:
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 100,
        "tie_word_embeddings": True,
    }
    d = root / f"run{tokens}" / stage
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config))
    manifest = {
        "kind": "correct",
        "stage": stage,
        "tokens": tokens,
        "wall_s": wall,
        "host": {"cpu": "Test CPU", "fp32_matmul_gflops": 100.0},
        "config": {"seq_len": 8, "batch_size": 4, "eval_tokens": 0, "matmul_precision": "highest"},
        "metrics": {"peak_memory_gib": 0.5},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))


def test_calibration_fits_efficiency_and_overhead(tmp_path):
    for tokens in (3_200, 32_000, 320_000):  # wall = 2 s + FLOPs at half of the 100 GFLOP/s probe
        _fake_run(tmp_path, tokens, 2.0 + tokens * 488_832 / (100e9 * 0.5))
    (rate,) = planner.calibrate([tmp_path])
    assert (rate.device, rate.kind, rate.precision, rate.runs) == ("cpu", "correct", "highest", 3)
    assert rate.efficiency == pytest.approx(0.5)
    assert rate.overhead_s == pytest.approx(2.0)
    device = planner.cpu_device({"cpu": "Test CPU", "fp32_matmul_gflops": 100.0})
    assert planner.pick_rate([rate], device, "correct", "highest") == (
        pytest.approx(0.5),
        pytest.approx(2.0),
        "calibrated (3 runs)",
    )
    assert planner.pick_rate([rate], planner.GPUS["h200"], "correct", "highest")[2] == "default"


def test_repeated_work_counts_its_fastest_run(tmp_path):
    for tokens, wall in ((3_200, 9.0), (32_000, 2.0 + 32_000 * 488_832 / 50e9)):
        _fake_run(tmp_path, tokens, wall)
    _fake_run(tmp_path / "again", 3_200, 2.0 + 3_200 * 488_832 / 50e9)  # the same work, uncontended
    (rate,) = planner.calibrate([tmp_path])
    assert rate.runs == 2
    assert (rate.efficiency, rate.overhead_s) == (pytest.approx(0.5), pytest.approx(2.0))


def test_one_run_calibrates_through_the_origin(tmp_path):
    _fake_run(tmp_path, 3_200, 3_200 * 488_832 / 100e9 / 0.25)
    (rate,) = planner.calibrate([tmp_path])
    assert (rate.efficiency, rate.overhead_s) == (pytest.approx(0.25), 0.0)


def test_running_peaks_follow_the_process_maximum():
    plans = [planner.StagePlan(str(i), "correct", planner.Layout(), planner.GPUS["h200"]) for i in range(3)]
    for p, gib in zip(plans, (1.0, 0.5, 2.0)):
        p.memory = planner.Memory(weights=gib * planner.GIB)
    assert planner.running_peaks(plans) == [1.0, 1.0, 2.0]


def test_parse_time():
    assert planner.parse_time("04:00:00") == 4 * 3600
    assert planner.parse_time("1-02:00:00") == 26 * 3600
    with pytest.raises(ValueError):
        planner.parse_time("four hours")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_plan_resources_over_every_shipped_recipe(recipe, tmp_path, capsys):
    assert main(["plan", str(recipe), "--resources", "--gpu", "h200", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: NVIDIA H200")
    assert "memory per rank, GiB" in out


def test_cli_exit_codes(tmp_path, capsys):
    smoke = str(ROOT / "recipes/smoke.yaml")
    args = ["plan", smoke, "--resources", "--runs-dir", str(tmp_path)]
    assert main([*args, "--gpu", "a100-80gb", "--gpus", "2", "--nodes", "1", "--time-limit", "00:10:00"]) == 0
    for bad in (["--gpus", "0"], ["--gpu", "tpu"], ["--nodes", "x"]):
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        assert e.value.code == 2
    assert main([*args, "--time-limit", "soon"]) == 2
    assert "bad time limit" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path)]) == 2


def test_calibrate_command_prints_the_fit(tmp_path, capsys):
    for tokens in (3_200, 32_000):
        _fake_run(tmp_path, tokens, 2.0 + tokens * 488_832 / (100e9 * 0.5))
    assert main(["calibrate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 stage runs" in out
    assert "efficiency  50.00%" in out and "overhead    2.0 s" in out


def test_validation_scripts_gpu_line_is_a_valid_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("planner_validation", ROOT / "bench/planner_validation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for device in ("cpu", "cuda"):
        recipe = load_recipe(bench.SMOKE, bench._scale(4, device))
        plans = planner.plan_recipe(recipe, planner.Target(planner.GPUS["h200"]))
        assert all(p.time_s is not None for p in plans if p.kind in ("correct", "distill", "prune"))
