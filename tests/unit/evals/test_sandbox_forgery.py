"""The sandbox's pass cannot be forged: a program that hunts for whatever the
runner uses to recognise a pass (its argv, environment, module globals, frames,
gc, open fds, /proc, its own memory), prints what it found the way the runner
does and ends with exit status 0 before the tests is graded failed. Each attack
runs with the test ``assert False`` appended, as a code task appends its tests.

Where the hunt could reach the runner's pass line, it would print it; so the
tests also check that the real pass line never shows up in the program's output.
"""

import re
import textwrap

import pytest

import evals.sandbox as sandbox
from evals.sandbox import Limits, Sandbox, runtime_access

SLOW_HUNT = Limits(wall_s=10.0, memory_mb=512, file_mb=4, processes=8)

# Collects every string or bytes that could be a token, from anything it is
# given, and prints each the way a runner prints its pass line: old style (hex)
# and new (16 raw bytes as colon-separated hex), then exits 0 before the tests.
HUNT = r"""
import os, re, marshal
_found = []
_write, _exit = os.write, os._exit
_HEX = re.compile(r"^[0-9a-f]{16,}$|^[0-9a-f]{2}(:[0-9a-f]{2}){7,}$")

def _keep(v, depth=0):
    if depth > 4:
        return
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v)
        if len(v) == 16:
            _found.extend([v.hex(), v.hex(":")])
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        for word in re.split(r"[^0-9a-zA-Z:]+", v):
            if _HEX.match(word):
                _found.append(word)
            if len(word) > 64 and re.fullmatch("[0-9a-f]+", word):  # a marshalled config
                try:
                    _keep(marshal.loads(bytes.fromhex(word)), depth + 1)
                except Exception:
                    pass
        return
    if isinstance(v, dict):
        for x in list(v.values()):
            _keep(x, depth + 1)
    elif isinstance(v, (list, tuple, set, frozenset)):
        for x in list(v):
            _keep(x, depth + 1)
    elif type(v).__name__ == "function":  # defaults, constants, closure cells
        _keep(v.__defaults__, depth + 1)
        _keep(v.__code__.co_consts, depth + 1)
        for cell in v.__closure__ or ():
            try:
                _keep(cell.cell_contents, depth + 1)
            except ValueError:
                pass

def _frames():
    try:
        raise RuntimeError
    except RuntimeError as e:
        f = e.__traceback__.tb_frame
    while f is not None:
        _keep(dict(f.f_locals))
        _keep(f.f_globals)
        f = f.f_back

def _forge():
    lines = "".join("\n%s done \n" % w for w in dict.fromkeys(_found))
    try:
        _write(1, lines.encode())
    except OSError:
        pass
    _exit(0)
"""

ATTACKS = {
    name: textwrap.dedent(source)
    for name, source in {
        "proc_cmdline": """
        for pid in ['self'] + [p for p in os.listdir('/proc') if p.isdigit()]:
            try:
                _keep(open('/proc/%s/cmdline' % pid, 'rb').read())
            except OSError:
                pass
        _forge()
        """,
        "sys_argv": """
        import sys
        _keep(sys.argv)
        _keep(getattr(sys, 'orig_argv', []))
        _forge()
        """,
        "main_globals": """
        import sys
        _keep(vars(sys.modules['__main__']))
        _forge()
        """,
        "frames": """
        _frames()
        _forge()
        """,
        "gc_objects": """
        import gc
        for o in gc.get_objects():
            _keep(o, 3)
            for r in gc.get_referents(o):
                if isinstance(r, (str, bytes)):
                    _keep(r)
        _forge()
        """,
        "exit_before_tests": """
        os._exit(0)
        """,
        "atexit_hook": """
        import atexit, sys

        def hook():
            _keep(vars(sys.modules['__main__']))
            _frames()
            _forge()

        atexit.register(hook)
        raise SystemExit(0)
        """,
        "forked_child": """
        import sys
        child = os.fork()
        if child == 0:
            _keep(vars(sys.modules['__main__']))
            _frames()
            _forge()
        os.waitpid(child, 0)
        os._exit(0)
        """,
        "orphan_after_exit": """
        import sys
        _keep(vars(sys.modules['__main__']))
        _frames()
        if os.fork() == 0:
            parent = os.getppid()
            while os.getppid() == parent:
                pass
            _forge()
        os._exit(0)
        """,
        "patched_builtins": """
        import builtins, sys
        names = ('isinstance', 'getattr', 'type', 'str', 'len', '__import__')
        real = {n: getattr(builtins, n) for n in names}

        def spy(*args, **kwargs):  # called by the runner once the tests fail
            f = sys._getframe(1)
            for n, fn in real.items():
                setattr(builtins, n, fn)
            while f is not None:
                _keep(dict(f.f_locals))
                _keep(f.f_globals)
                f = f.f_back
            _forge()

        for n in names:
            setattr(builtins, n, spy)
        """,
        "patched_os": """
        def write(fd, data):  # whatever the runner writes carries its marks
            _keep(data)
            _forge()

        os.write = write
        os._exit = lambda code: _exit(0)
        """,
        "fds_and_environment": """
        _keep(dict(os.environ))
        for pid in ['self'] + os.listdir('/proc'):
            try:
                _keep(open('/proc/%s/environ' % pid, 'rb').read())
            except (OSError, ValueError):
                pass
            try:
                fds = ['/proc/%s/fd/%s' % (pid, n) for n in os.listdir('/proc/%s/fd' % pid)]
            except OSError:
                fds = []
            for path in fds:
                try:
                    _keep(os.read(os.open(path, os.O_RDONLY | os.O_NONBLOCK), 1 << 16))
                except OSError:
                    pass
        for fd in range(3, 1024):
            try:
                os.set_blocking(fd, False)
                _keep(os.read(fd, 1 << 16))
            except OSError:
                pass
        _forge()
        """,
        "status_pipe": """
        fake = '00' + ':00' * 15
        for pid in os.listdir('/proc'):
            try:
                names = os.listdir('/proc/%s/fd' % pid)
            except OSError:
                continue
            for n in names:
                try:
                    fd = os.open('/proc/%s/fd/%s' % (pid, n), os.O_WRONLY | os.O_NONBLOCK)
                    os.write(fd, ('runner %s x\\nwait 0\\n' % fake).encode())
                except OSError:
                    pass
        _found.append(fake)
        _forge()
        """,
        "own_memory": """
        pattern = re.compile(rb'[0-9a-f]{32}|[0-9a-f]{2}(?::[0-9a-f]{2}){15}')
        try:
            maps = open('/proc/self/maps').read().splitlines()
            mem = open('/proc/self/mem', 'rb', 0)
        except OSError:
            maps = []
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split('-'))
            if 'r' not in perms or hi - lo > 64 << 20:
                continue
            try:
                mem.seek(lo)
                chunk = mem.read(hi - lo)
            except (OSError, OverflowError):
                continue
            _found.extend(m.group().decode() for m in pattern.finditer(chunk))
        _forge()
        """,
    }.items()
}


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """Every attack's Result, with the pass line its runner announced to the
    parent (read from the status stream the parent's verdict was made from)."""
    announced: dict[int, str | None] = {}
    real = sandbox._verdict

    def spy(streams, *args, **kwargs):
        result = real(streams, *args, **kwargs)
        runner = re.search(r"^runner (\S+) ", streams["status"].decode("utf-8", "replace"), re.M)
        announced[id(result)] = runner.group(1) if runner else None
        return result

    sandbox._verdict = spy
    try:
        box = Sandbox(SLOW_HUNT, tmp_root=str(tmp_path_factory.mktemp("forgery")))
        names = list(ATTACKS)
        results = box.run_many([HUNT + ATTACKS[n] + "\nassert False\n" for n in names])
    finally:
        sandbox._verdict = real
    return {n: (r, announced.get(id(r))) for n, r in zip(names, results)}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_hunting_program_cannot_forge_a_pass(forged, name):
    result, _ = forged[name]
    assert not result.passed, (name, result.stdout[-500:])
    assert result.status in ("failed", "killed", "timeout"), (result.status, result.reason)


@pytest.mark.parametrize("name", [n for n in ATTACKS if n != "status_pipe"])
def test_the_pass_line_is_out_of_the_programs_reach(forged, name):
    """Whatever a hunt found, the real pass line was not among it."""
    result, line = forged[name]
    assert line is not None, "the runner announced no pass line"
    assert line not in result.stdout and line not in result.stderr


@pytest.mark.parametrize("mode", ["userns", "none"])
def test_weaker_modes_cannot_be_forged_either(mode, tmp_path):
    """The degraded modes, where this machine allows them."""
    box = Sandbox(SLOW_HUNT, isolation=mode, tmp_root=str(tmp_path))
    if box.describe().startswith("unavailable"):
        pytest.skip(f"isolation {mode!r} is not available on this machine")
    results = box.run_many([HUNT + ATTACKS[n] + "\nassert False\n" for n in ATTACKS])
    assert {n: r.passed for n, r in zip(ATTACKS, results)} == {n: False for n in ATTACKS}


def test_an_honest_program_still_passes_next_to_the_attacks(tmp_path):
    result = Sandbox(SLOW_HUNT, tmp_root=str(tmp_path)).run(HUNT + "print('fine')\nassert 1 + 1 == 2\n")
    assert (result.passed, result.status, result.reason, result.stdout) == (True, "passed", None, "fine\n")


def test_an_extra_pass_shaped_line_fails_the_program():
    """Printing many candidate pass lines (one of which may be right) is not a pass."""
    line = ":".join(["ab"] * 16)
    other = ":".join(["cd"] * 16)
    status = f"isolation x\nrunner {line} 0123abcd\nwait 0\n".encode()
    honest = {"stdout": f"ok\n\n{line} done \n".encode(), "stderr": b"", "status": status}
    sprayed = {"stdout": f"\n{other} done \n\n{line} done \n".encode(), "stderr": b"", "status": status}
    assert sandbox._verdict(honest, False, Limits()).passed
    result = sandbox._verdict(sprayed, False, Limits())
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason == "printed a line shaped like the runner's pass line"


def test_no_pass_without_the_runners_announcement():
    line = ":".join(["ab"] * 16)
    streams = {"stdout": f"\n{line} done \n".encode(), "stderr": b"", "status": b"wait 0\n"}
    assert not sandbox._verdict(streams, False, Limits()).passed


# ----------------------------------------------- what pairs refuse to trust


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos._exit(0)\n",
        "import sys\n",
        "from os import path\n",
        "import gc\n",
        "import builtins\n",
        "import ctypes\n",
        "import posix\n",
        "x = __import__('o' + 's')\n",
        "__builtins__['print']\n",
        "open('/proc/self/mem')\n",
        "def f():\n    raise E\n    e.__traceback__.tb_frame.f_back\n",
        "import importlib\nimportlib.import_module('os')\n",
        "import os.path as p\n",
    ],
)
def test_runtime_access_flags_code_that_can_reach_the_runner(code):
    assert runtime_access(code) is not None


@pytest.mark.parametrize(
    "code",
    [
        "import math\n\ndef f(x):\n    return math.sqrt(x)\n",
        "from collections import Counter\n\ndef most(xs):\n    return Counter(xs).most_common(1)[0][0]\n",
        "def cost(items):\n    return sum(i.cost for i in items)  # a 'sys' word in a comment\n",
        "import re\n\ndef words(s):\n    return re.findall(r'[a-z]+', s.lower())\n",
    ],
)
def test_runtime_access_passes_ordinary_solutions(code):
    assert runtime_access(code) is None


def test_runtime_access_reads_unparsable_text_by_its_words():
    assert runtime_access("Here you go:\nimport os\nos._exit(0)\nand then the tests") == "imports os"
    assert runtime_access("The answer is 42.") is None


def test_pairs_do_not_trust_code_answers_that_reach_the_runner():
    """A code task's answer that touches os, sys, builtins, gc or /proc is
    neither chosen nor rejected; other sources' answers are left alone."""
    import random

    from factory.alignment.verifiers import Verifiable
    from factory.stages.pairs import PairsConfig, choose_pair, trusted_scores

    honest, forger, wrong = (
        "def f(x):\n    return 2 * x\n",
        "import os\nprint('x')\nos._exit(0)\n",
        "def f(x):\n    return x\n",
    )
    code_task = Verifiable("code-0", [], lambda a: 1.0, runs_code=True)
    scores = trusted_scores(code_task, [forger, honest, wrong], [1.0, 1.0, 0.0])
    assert scores[1:] == [1.0, 0.0] and scores[0] != scores[0]  # NaN: neither passing nor failing
    cfg = PairsConfig(model="m")
    assert choose_pair([forger, honest, wrong], scores, cfg, random.Random(0)) == (honest, wrong)
    assert (
        choose_pair([forger, wrong], trusted_scores(code_task, [forger, wrong], [1.0, 0.0]), cfg, random.Random(0))
        is None
    )
    prose = Verifiable("constraints-0", [], lambda a: 1.0)
    assert trusted_scores(prose, ["import os", "ok"], [1.0, 0.0]) == [1.0, 0.0]


def test_the_harness_limit_an_object_equal_to_everything_passes(tmp_path):
    """What no in-process harness closes (see docs/reliability.md): the program
    controls the values the tests compare. runtime_access cannot see it either."""
    cheat = "class Anything:\n    def __eq__(self, other):\n        return True\n\ndef f(x):\n    return Anything()\n"
    result = Sandbox(SLOW_HUNT, tmp_root=str(tmp_path)).run(cheat + "\nassert f(3) == 6\n")
    assert result.passed and runtime_access(cheat) is None
