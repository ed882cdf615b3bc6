"""The vllm engine's platform defaults: on a CPU without bf16 units it computes in
float32 (vLLM's auto would pick bf16 and emulate it, 4.6x slower on a 2-core AVX2
host) and caps sequences and KV cache; on a GPU unset settings stay vLLM's."""

from evals.engines.vllm import CPU_KV_CACHE_BYTES, CPU_MAX_NUM_SEQS, cpu_has_native_bf16, platform_args

EPYC_AVX2 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
    "flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni\n"
)
XEON_AVX512 = "flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve bf16 i8mm\n"


def test_bf16_units_are_read_from_cpuinfo():
    assert cpu_has_native_bf16(EPYC_AVX2) is False
    assert cpu_has_native_bf16(XEON_AVX512) is False  # AVX-512 without its bf16 extension
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) is True
    assert cpu_has_native_bf16(GRAVITON3) is True


def test_unknown_cpu_leaves_vllm_to_choose():
    assert cpu_has_native_bf16("") is True
    assert cpu_has_native_bf16("processor\t: 0\nmodel name\t: something\n") is True


SETTINGS = {
    "dtype": "auto",
    "tensor_parallel_size": 1,
    "data_parallel_size": 1,
    "max_num_seqs": None,
    "max_model_len": None,
    "gpu_memory_utilization": 0.9,
    "kv_cache_memory_bytes": None,
    "seed": 0,
}


def test_gpu_leaves_unset_settings_to_vllm(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = platform_args(SETTINGS, on_cpu=False, native_bf16=False)
    # no 64-sequence cap, no KV-cache size, dtype as asked: a GPU runs at vLLM's own defaults
    assert args == {"dtype": "auto", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9, "seed": 0}


def test_small_cpu_defaults_and_what_the_user_sets_wins(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = platform_args(SETTINGS, on_cpu=True, native_bf16=False)
    assert (args["dtype"], args["max_num_seqs"]) == ("float32", CPU_MAX_NUM_SEQS)
    assert 0 < args["kv_cache_memory_bytes"] <= CPU_KV_CACHE_BYTES
    assert platform_args(SETTINGS, on_cpu=True, native_bf16=True)["dtype"] == "auto"
    mine = {**SETTINGS, "dtype": "bfloat16", "max_num_seqs": 256, "kv_cache_memory_bytes": 8 << 30}
    args = platform_args(mine, on_cpu=True, native_bf16=False)
    assert (args["dtype"], args["max_num_seqs"], args["kv_cache_memory_bytes"]) == ("bfloat16", 256, 8 << 30)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM's own knob: then we set no size
    assert "kv_cache_memory_bytes" not in platform_args(SETTINGS, on_cpu=True, native_bf16=False)


def test_planned_identity_resolves_the_dtype_as_the_engine_will(tmp_path, monkeypatch):
    """A rerun whose completions are all cached skips building vLLM (minutes on a CPU)
    only if it can tell, without vLLM, the dtype the engine would run in."""
    import evals.engines.vllm as vllm_engine
    from evals.engines import planned_identity
    from evals.engines.common import model_hash

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    digest = model_hash(str(model))
    monkeypatch.setattr(vllm_engine, "_on_cpu", lambda: True)
    monkeypatch.setattr(vllm_engine, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert planned_identity("vllm", str(model), {}) == {"engine": "vllm", "dtype": "float32", "model": digest}
    assert planned_identity("vllm", str(model), {"dtype": "bfloat16"})["dtype"] == "bfloat16"
    assert planned_identity("vllm", str(model), {"engine_args": {"dtype": "float16"}})["dtype"] == "float16"
    monkeypatch.setattr(vllm_engine, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    # vLLM's auto: the dtype it computes in is known once it has read the checkpoint, so the
    # planned identity cannot name it (the built engine's description does, see describe)
    assert planned_identity("vllm", str(model), {}) is None
    monkeypatch.setattr(vllm_engine, "_on_cpu", lambda: False)  # a GPU: vLLM's auto
    assert planned_identity("vllm", str(model), {"max_num_seqs": 8}) is None
    assert planned_identity("vllm", str(model), {"dtype": "float32"})["dtype"] == "float32"
    assert planned_identity("vllm", "org/hub-name", {}) is None  # content not on this machine
    assert planned_identity("openai", "served", {"base_url": "http://h/v1"}) is None  # only the server knows
    assert planned_identity("vllm", str(model), {"batch": 4}) is None  # make_engine reports the bad key
