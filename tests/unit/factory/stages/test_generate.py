"""The ``generate`` stage on a tiny random Llama: the answers are the model's own greedy
answers, the prompts are chosen in the seeded order, truncated answers are dropped and
counted, and the artifact feeds ``tokenize`` (chat-template renderings) and a blended
``distill``."""

import importlib.util
import json
from collections import Counter

import pytest
import torch
from transformers import GenerationConfig

from evals.api import Completion
from factory.alignment.records import Conversation, iter_conversations
from factory.corpus import load_corpus
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from factory.sources.produced import dataset_from_artifact
from factory.sources.tiny import byte_tokenizer
from factory.stages.generate import GenerateConfig, Prompt, answer_records, prompt_turns, select_prompts, truncated
from foundation.artifacts import read_manifest
from foundation.errors import FactoryError
from tests.conftest import RECIPES
from tests.unit.factory.tiny_models import tiny_llama

MAX_NEW = 8
SYSTEM = {"role": "system", "content": "Answer briefly."}


def _turns(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


# 10 records: single turns, a system turn, multi-turn (the prompt keeps the earlier answer),
# and one with no user turn before its answer (skipped).
CHATS = [
    _turns("What is 2 plus 3?", "5."),
    [SYSTEM, *_turns("Name a colour.", "Blue.")],
    _turns("Hello there.", "Hi!", "How are you?", "Fine."),
    _turns("Spell cat backwards.", "tac"),
    [SYSTEM, {"role": "assistant", "content": "An answer to nobody."}],
    _turns("Is 7 odd?", "Yes."),
    _turns("Count to three.", "1 2 3"),
    [SYSTEM, *_turns("What is the capital of France?", "Paris.")],
    _turns("Say a word.", "Word.", "Another one.", "Tree."),
    _turns("What is 10 minus 4?", "6."),
]
PROMPTS = {i: prompt_turns(c) for i, c in enumerate(CHATS) if prompt_turns(c) is not None}  # record index -> prompt


def _greedy(model, tok, messages: list[dict]) -> list[int]:
    """transformers' own greedy decoding of the rendered prompt: the generated ids (EOS included if reached)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=2, pad_token_id=2)
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def answerer(tmp_path_factory):
    """A tiny random Llama whose LM-head rows of EOS and of a token ``t`` are swapped, ``t``
    chosen so that some prompts' greedy answers meet it within MAX_NEW tokens and others do not:
    the first ends there (a finished answer), the second runs into the limit (truncated).
    Returns the checkpoint dir and, per prompt, transformers' greedy answer (ids) from it."""
    tok = byte_tokenizer()
    model = tiny_llama(seed=3, tie_word_embeddings=False)
    plain = {i: _greedy(model, tok, p) for i, p in PROMPTS.items()}
    seen = Counter(t for ids in plain.values() for t in set(ids) if t > 2)
    t = min(seen, key=lambda k: (abs(seen[k] - len(PROMPTS) / 2), k))
    with torch.no_grad():
        w = model.lm_head.weight
        w[[2, t]] = w[[t, 2]]
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    out = tmp_path_factory.mktemp("answerer")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    greedy = {i: _greedy(model, tok, p) for i, p in PROMPTS.items()}
    done = {i for i, ids in greedy.items() if ids[-1] == 2}
    assert 0 < len(done) < len(greedy)  # the premise: both finished and truncated answers
    return out, greedy


RECIPE = """
name: gen
seed: {seed}
models:
  answerer: {{path: {model}}}
  student: {{tiny: {{num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 64}}}}
datasets:
  chats: {{path: chats.jsonl, format: chat, licence: CC0-1.0 (test data)}}
  prose: {{path: {prose}, doc_chars: 300, licence: CC0-1.0}}
stages:
  gen: {{kind: generate, model: answerer, data: chats, max_new_tokens: {n}, device: cpu, batch_size: 4}}
  gen_all: {{kind: generate, model: answerer, data: chats, max_new_tokens: {n}, drop_truncated: false, device: cpu}}
  gen_four: {{kind: generate, model: answerer, data: chats, max_new_tokens: {n}, drop_truncated: false,
             max_prompts: 4, device: cpu}}
"""


def _recipe(tmp_path, model, seed=0, extra=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    path = tmp_path / "gen.yaml"
    path.write_text(RECIPE.format(seed=seed, model=model, prose=RECIPES / "data" / "smoke.txt", n=MAX_NEW) + extra)
    return path


def _answers(art) -> list[dict]:
    return [json.loads(x) for x in (art / "answers.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def gen_runs(answerer, tmp_path_factory):
    """The three generate stages run once, and the full one again under seed 1."""
    base = tmp_path_factory.mktemp("gen")
    out = {}
    for seed in (0, 1):
        recipe = load_recipe(_recipe(base / str(seed), answerer[0], seed))
        until = ("gen", "gen_all", "gen_four") if seed == 0 else ("gen_all",)
        for stage in until:
            Pipeline(recipe, base / str(seed) / "runs", progress=False).run(until=stage)
            out[seed, stage] = base / str(seed) / "runs" / "gen" / stage
    return out


def test_answers_are_the_models_greedy_answers_and_truncated_ones_are_dropped(answerer, gen_runs):
    tok = byte_tokenizer()
    _, greedy = answerer
    done = {i for i, ids in greedy.items() if ids[-1] == 2}
    art = gen_runs[0, "gen"]
    man = read_manifest(art)
    met = man["metrics"]
    assert met["records"] == 10 and met["skipped_no_user_turn"] == 1 and met["prompts"] == 9
    assert met["answers"] == len(done) and met["dropped_truncated"] == 9 - len(done) and met["dropped_empty"] == 0
    recs = _answers(art)
    assert {int(r["id"]) for r in recs} == done
    for r in recs:
        i = int(r["id"])
        want = tok.decode(greedy[i][:-1], skip_special_tokens=True)
        assert r["messages"] == [*PROMPTS[i], {"role": "assistant", "content": want}]
    assert met["mean_answer_tokens"] == pytest.approx(sum(len(greedy[i]) for i in done) / len(done))
    assert met["mean_answer_chars"] == pytest.approx(sum(len(r["messages"][-1]["content"]) for r in recs) / len(recs))
    entry = man["dataset"]
    assert entry["file"] == "answers.jsonl" and entry["format"] == "chat" and entry["records"] == len(recs)
    assert "answerer" in entry["licence"] and "chats" in entry["licence"] and "CC0-1.0 (test data)" in entry["licence"]
    assert man["generator"]["engine"] == "hf" and man["generator"]["device"] == "cpu"
    # the chat reader takes the artifact as it is
    spec = dataset_from_artifact(art, "stages.next.data")
    assert [c.messages for c in iter_conversations(spec, art)] == [r["messages"] for r in recs]


def test_kept_truncated_answers_are_the_first_max_new_tokens(answerer, gen_runs):
    tok = byte_tokenizer()
    _, greedy = answerer
    recs = _answers(gen_runs[0, "gen_all"])
    met = read_manifest(gen_runs[0, "gen_all"])["metrics"]
    assert len(recs) == met["answers"] == 9 and met["dropped_truncated"] == 0
    for r in recs:
        ids = greedy[int(r["id"])]
        assert r["messages"][-1]["content"] == tok.decode(ids[:-1] if ids[-1] == 2 else ids, skip_special_tokens=True)


def test_max_prompts_takes_the_first_of_the_seeded_order(gen_runs):
    full = [r["id"] for r in _answers(gen_runs[0, "gen_all"])]
    four = [r["id"] for r in _answers(gen_runs[0, "gen_four"])]
    other = [r["id"] for r in _answers(gen_runs[1, "gen_all"])]
    assert four == full[:4] and read_manifest(gen_runs[0, "gen_four"])["metrics"]["prompts"] == 4
    assert sorted(other) == sorted(full) and other != full  # another seed, another order
    assert full != sorted(full, key=int)  # shuffled, not stored order


def _conv(i: int, messages: list[dict]) -> Conversation:
    return Conversation(messages, None, f"f:{i}")


def test_select_prompts_is_one_seeded_order_cut_anywhere():
    convs = [_conv(i, _turns(f"q{i}", f"a{i}")) for i in range(50)]
    convs[7] = _conv(7, [SYSTEM, {"role": "assistant", "content": "x"}])
    counts = Counter()
    order = [p.index for p in select_prompts(convs, 5, None, counts)]
    assert sorted(order) == [i for i in range(50) if i != 7] and counts == {"records": 50, "no_user_turn": 1}
    for k in (1, 10, 49, 60):
        assert [p.index for p in select_prompts(convs, 5, k, Counter())] == order[:k]
    assert [p.index for p in select_prompts(convs, 6, None, Counter())] != order
    assert select_prompts(convs, 5, 3, Counter())[0].messages == [{"role": "user", "content": f"q{order[0]}"}]


def test_the_prompt_ends_before_the_last_assistant_turn():
    chat = _turns("a", "b", "c", "d")
    assert prompt_turns(chat) == chat[:3]
    assert prompt_turns([SYSTEM, *_turns("q", "a")]) == [SYSTEM, {"role": "user", "content": "q"}]
    assert prompt_turns([SYSTEM, {"role": "assistant", "content": "a"}]) is None


def test_truncation_from_the_finish_reason_or_the_token_count():
    assert truncated(Completion(["a", "b"], [3, 8], ["stop", "length"]), 1, 8)
    assert not truncated(Completion(["a", "b"], [3, 8], ["stop", "length"]), 0, 8)
    assert truncated(Completion(["a"], [8]), 0, 8) and not truncated(Completion(["a"], [7]), 0, 8)


def test_a_plain_text_dataset_is_one_line_naming_the_key(tmp_path, answerer):
    extra = "  bad: {kind: generate, model: answerer, data: prose, device: cpu}\n"
    recipe = load_recipe(_recipe(tmp_path, answerer[0], extra=extra))
    with pytest.raises(FactoryError, match=r"^stages\.bad\.data: generate needs a dataset with format chat") as e:
        Pipeline(recipe, tmp_path / "runs", progress=False).run(until="bad")
    assert "\n" not in str(e.value) and "got auto (documents by file extension" in str(e.value)


def test_greedy_with_several_samples_is_refused_at_load(tmp_path, answerer):
    extra = "  bad: {kind: generate, model: answerer, data: chats, samples_per_prompt: 2}\n"
    with pytest.raises(FactoryError, match=r"stages\.bad\.samples_per_prompt: greedy answers are all alike"):
        load_recipe(_recipe(tmp_path, answerer[0], extra=extra))


BLEND = """
  answers_tok: {kind: tokenize, data: gen_all, tokenizer: answerer, heldout_tokens: 64, workers: 1}
  prose_tok: {kind: tokenize, data: prose, tokenizer: answerer, heldout_tokens: 64, workers: 1}
  distill:
    kind: distill
    student: student
    teacher: answerer
    data: {blend: [[0.5, prose_tok], [0.5, answers_tok]]}
    seq_len: 16
    batch_size: 2
    max_tokens: 128
    eval_tokens: 32
    device: cpu
  distill_direct: {kind: distill, student: student, teacher: answerer, data: gen_all, seq_len: 16, batch_size: 2,
                   max_tokens: 64, eval_tokens: 32, device: cpu}
"""


def test_tokenized_answers_are_chat_renderings_and_feed_a_blended_distill(tmp_path, answerer):
    recipe = load_recipe(_recipe(tmp_path, answerer[0], extra=BLEND))
    runs = tmp_path / "runs" / "gen"
    Pipeline(recipe, tmp_path / "runs", progress=False).run(until="distill")
    tok = byte_tokenizer()
    recs = _answers(runs / "gen_all")
    corpus = load_corpus(runs / "answers_tok")
    docs = [reader[i].tolist() for reader in corpus.heldout + corpus.train for i in range(len(reader))]
    want = [
        tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"] + [2]
        for r in recs
    ]
    assert docs == want
    assert "answerer" in corpus.meta["licence"]
    dist = read_manifest(runs / "distill")
    corpora = dist["data"]["corpora"]
    assert set(corpora) == {"prose_tok", "answers_tok"}
    assert corpora["answers_tok"]["weight"] == pytest.approx(0.5)
    assert corpora["answers_tok"]["realised_samples"] > 0 and corpora["prose_tok"]["realised_samples"] > 0
    assert dist["tokens"] == 128 and dist["metrics"]["heldout_kl_after"] >= 0
    # without a blend, distill packs the answers itself, rendered with the same chat template
    Pipeline(recipe, tmp_path / "runs", progress=False).run(until="distill_direct")
    direct = read_manifest(runs / "distill_direct")
    assert direct["tokens"] == 64 and "answerer" in direct["data"]["licence"]


def test_a_rerun_reuses_the_logged_completions_and_generates_the_rest(tmp_path, answerer):
    """One-token answers are all truncated: the stage fails, its work dir keeps the completions.
    The rerun takes what the log holds (here altered, to tell it apart), skips a line cut short
    by a kill, and generates only the prompt whose line is gone."""
    extra = "  short: {kind: generate, model: answerer, data: chats, max_new_tokens: 1, device: cpu}\n"
    recipe = load_recipe(_recipe(tmp_path, answerer[0], extra=extra))
    with pytest.raises(FactoryError, match=r"stages\.short: every answer was dropped \(9 truncated"):
        Pipeline(recipe, tmp_path / "runs", progress=False).run(until="short")
    (log,) = (tmp_path / "runs" / "gen" / ".work").glob("short-*/completions.jsonl")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == sorted(PROMPTS) and all(r["tokens"] == [1] for r in lines)
    gone = lines.pop()["index"]
    kept = [{**r, "texts": [f"logged {r['index']}"], "finish_reasons": ["stop"]} for r in lines]
    log.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"index": 99, "tex')
    Pipeline(recipe, tmp_path / "runs", progress=False).run(until="short")
    man = read_manifest(tmp_path / "runs" / "gen" / "short")
    # the prompt whose line was gone got a fresh one-token answer, truncated again
    assert man["metrics"]["answers"] == 8 and man["metrics"]["dropped_truncated"] == 1
    got = {int(r["id"]): r["messages"][-1]["content"] for r in _answers(tmp_path / "runs" / "gen" / "short")}
    assert got == {r["index"]: f"logged {r['index']}" for r in lines} and gone not in got
    assert not log.exists()  # a finished stage leaves no work dir behind


def test_the_nemo_engine_runs_it_natively(tmp_path, answerer):
    from factory.executors import executor_name

    recipe = load_recipe(_recipe(tmp_path, answerer[0]), ["engine=nemo"])
    assert executor_name(recipe, "gen") == "native"


NO_VLLM = importlib.util.find_spec("vllm") is None


@pytest.mark.skipif(not NO_VLLM, reason="auto may choose vLLM where it is installed")
def test_auto_without_vllm_runs_hf_and_vllm_is_one_line(tmp_path, answerer, gen_runs):
    extra = (
        "  auto: {kind: generate, model: answerer, data: chats, max_new_tokens: 8, drop_truncated: false, "
        "engine: auto, device: cpu}\n"
        "  vllm: {kind: generate, model: answerer, data: chats, engine: vllm}\n"
    )
    recipe = load_recipe(_recipe(tmp_path, answerer[0], extra=extra))
    Pipeline(recipe, tmp_path / "runs", progress=False).run(until="auto")
    art = tmp_path / "runs" / "gen" / "auto"
    assert read_manifest(art)["generator"]["engine"] == "hf"
    assert _answers(art) == _answers(gen_runs[0, "gen_all"])
    with pytest.raises(FactoryError, match=r"vllm") as e:
        Pipeline(recipe, tmp_path / "runs", progress=False).run(until="vllm")
    assert "\n" not in str(e.value)


def test_unknown_engine_settings_are_refused_at_load(tmp_path, answerer):
    extra = "  bad: {kind: generate, model: answerer, data: chats, engine_settings: {max_num_seqs: 4}}\n"
    with pytest.raises(FactoryError, match=r"stages\.bad\.engine_settings\.max_num_seqs: unknown setting of engine hf"):
        load_recipe(_recipe(tmp_path, answerer[0], extra=extra))


def test_answer_records_name_each_sample_and_count_what_they_drop():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    prompts = [Prompt(4, _turns("q4"), None), Prompt(9, _turns("q9"), tools)]
    comps = [
        Completion(["ok", "cut", " "], [2, 8, 1], ["stop", "length", "stop"]),
        Completion(["yes", "fine", "x"], [3, 4, 1], ["stop", "stop", "stop"]),
    ]
    cfg = GenerateConfig(model="m", data="d", max_new_tokens=8, temperature=1.0, samples_per_prompt=3, min_chars=2)
    counts = Counter()
    recs = list(answer_records(prompts, comps, cfg, counts))
    assert [r["id"] for r in recs] == ["4.0", "9.0", "9.1"]
    assert recs[1]["tools"] == tools and "tools" not in recs[0]
    assert recs[2]["messages"] == [{"role": "user", "content": "q9"}, {"role": "assistant", "content": "fine"}]
    assert counts == {"dropped_truncated": 1, "dropped_empty": 2, "answer_tokens": 9, "answer_chars": 9}
