"""On a CPU without bf16 units the vllm engine computes in float32 (vLLM's auto
would pick bf16 and emulate it, 4.6x slower on a 2-core AVX2 host)."""

from evals.engines.vllm import cpu_has_native_bf16

EPYC_AVX2 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
             "flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni\n")
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
