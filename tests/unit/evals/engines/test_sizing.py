"""evals.engines.sizing: batch sizes from device memory, with hand-computed figures; the
CPU keeps its tuned defaults, and both the hf engine and factory-hf take them on a CPU."""

import pytest
import torch
from transformers import LlamaConfig

from evals.engines import make_engine, sizing
from factory.sources.tiny import TinyLlamaSpec, build_tiny

GIB = 2**30
SMOLLM2_FP32 = sizing.ModelCost(
    layers=30, hidden=576, ffn=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152, dtype_bytes=4
)
LLAMA8B_BF16 = sizing.ModelCost(
    layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256, dtype_bytes=2
)


def test_per_token_costs_by_hand():
    assert SMOLLM2_FP32.kv_bytes_per_token() == 2 * 30 * 3 * 64 * 4 == 46_080
    # (4*576 + 2*576 + 2*192 + 3*1536) fp32 elements, 9 heads of fp32 scores over 1024 keys, a bool mask row
    assert SMOLLM2_FP32.forward_bytes_per_token(1024) == 8448 * 4 + 9 * 1024 * 4 + 1024 == 71_680
    assert LLAMA8B_BF16.kv_bytes_per_token() == 131_072  # 128 KiB a token
    assert LLAMA8B_BF16.forward_bytes_per_token(4096) == 69_632 * 2 + 32 * 4096 * 4 + 4096 == 667_648


def test_a_cpu_keeps_the_tuned_defaults():
    assert sizing.scoring_batch(None, SMOLLM2_FP32, 1024) == (64, 1024)
    assert sizing.generation_batch(None, SMOLLM2_FP32, 4096) == (64, 4096)
    assert sizing.device_free_bytes(torch.device("cpu")) is None


def test_a_small_model_on_a_large_gpu_reaches_the_caps():
    free = 138 * GIB  # an H200 after loading 135M parameters
    assert sizing.scoring_batch(free, SMOLLM2_FP32, 1024) == (1024, 65_536)
    assert sizing.generation_batch(free, SMOLLM2_FP32, 4096) == (256, 32_768)


def test_an_8b_model_is_sized_by_its_kv_cache():
    free = 60 * GIB
    budget = 0.6 * free
    prefill = int(budget / 4 // 667_648)
    cache = budget - prefill * 667_648 - 3 * 256 * 128_256 * 4
    sequences = int(cache // (131_072 * 4096))
    assert (prefill, sequences) == (14_474, 53)
    assert sizing.generation_batch(free, LLAMA8B_BF16, 4096) == (53, 14_474)
    tokens = int((budget - 3 * 512 * 128_256 * 4) // LLAMA8B_BF16.forward_bytes_per_token(1024))
    assert sizing.scoring_batch(free, LLAMA8B_BF16, 1024) == (min(1024, tokens // 16), min(65_536, tokens))


def test_less_free_memory_never_gives_a_larger_batch_and_a_full_device_gets_one():
    sizes = [sizing.generation_batch(g * GIB, LLAMA8B_BF16, 4096) for g in (1, 4, 16, 40, 80)]
    assert sizes == sorted(sizes) and sizes[0] == (1, int(0.6 * GIB / 4 // 667_648)) == (1, 241)
    assert sizing.generation_batch(0, LLAMA8B_BF16, 4096) == sizing.scoring_batch(0, LLAMA8B_BF16, 1024) == (1, 1)


def test_model_cost_from_a_transformers_config():
    cfg = LlamaConfig(
        num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152,
    )  # fmt: skip
    assert sizing.ModelCost.from_config(cfg, torch.float32) == SMOLLM2_FP32
    assert sizing.ModelCost.from_config(cfg, torch.bfloat16).dtype_bytes == 2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    build_tiny(TinyLlamaSpec(), d)
    return d


def test_the_hf_engine_on_a_cpu_uses_the_defaults_unless_told(tiny_dir):
    engine = make_engine("hf", str(tiny_dir))
    assert (engine.max_batch, engine.prefill_tokens) == (64, 4096)
    assert engine.describe()["max_batch"] == 64
    engine = make_engine("hf", str(tiny_dir), max_batch=3, prefill_tokens=100)
    assert (engine.max_batch, engine.prefill_tokens) == (3, 100)


def test_factory_hf_on_a_cpu_uses_the_defaults_unless_told(tiny_dir):
    from evals.harness import FastLM

    lm = FastLM(pretrained=str(tiny_dir), device="cpu")
    assert (lm.max_rows, lm.max_batch_tokens) == (64, 1024)
    assert FastLM(pretrained=str(tiny_dir), device="cpu", batch_size="auto").max_rows == 64
    lm = FastLM(pretrained=str(tiny_dir), device="cpu", batch_size=8, max_batch_tokens=256)
    assert (lm.max_rows, lm.max_batch_tokens) == (8, 256)
