"""The code sandbox: hostile programs are contained and reported as failures
with a reason, and this pytest process (the parent) is never harmed."""

import os
import socket
import uuid
from pathlib import Path

import pytest

from evals.sandbox import Limits, Sandbox, find_told, strip_token
from foundation.errors import FactoryError

ROOT = Path(__file__).resolve().parents[3]  # the repository
SECRET_NAME = "SANDBOX_TEST_SECRET_" + uuid.uuid4().hex[:8].upper()
FAST = Limits(wall_s=2.0, memory_mb=256, file_mb=4, processes=8)


def _mode_isolation(mode: str) -> str | None:
    text = Sandbox(FAST, isolation=mode).describe()
    return None if text.startswith("unavailable") else text


@pytest.fixture(scope="module")
def isolation():
    text = _mode_isolation("auto")
    assert text, "the sandbox cannot run a program at all"
    return text


def _contains_signals(text: str) -> bool:
    """kill(-1) is only safe to try where the box cannot reach our processes."""
    return ("namespaces:" in text and "pid" in text) or "no signals out of the box" in text


@pytest.fixture(scope="module")
def server():
    """A loopback TCP server the boxed programs try to reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def _hostile_programs(tmp: Path, port: int) -> dict[str, str]:
    me, group = os.getpid(), os.getpgid(0)
    return {
        "loop": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(60)\n",
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "escape_group": (
            "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        time.sleep(60)\n        os._exit(0)\ntime.sleep(60)\n"
        ),
        "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n",
        "huge_file": "with open('big.bin', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * (1 << 20))\n",
        "write_parent_tmp": f"open({str(tmp / 'outside.txt')!r}, 'w').write('gotcha')\n",
        "write_repo": f"open({str(ROOT / 'SANDBOX_ESCAPE.txt')!r}, 'w').write('gotcha')\n",
        "write_tmp": f"open('/tmp/sandbox-escape-{me}.txt', 'w').write('gotcha')\n",
        "write_root_home": f"open('/root/.sandbox-escape-{me}', 'w').write('gotcha')\n",
        "read_env": (
            "import os\nseen = set(os.environ)\nfor pid in os.listdir('/proc'):\n    try:\n"
            "        data = open(f'/proc/{pid}/environ', 'rb').read()\n    except (OSError, ValueError):\n"
            "        continue\n    seen |= {kv.split(b'=')[0].decode(errors='replace') "
            "for kv in data.split(b'\\0') if kv}\nprint(sorted(seen))\n"
        ),
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n",
        "raw_socket": (f"import _socket\ns = _socket.socket()\ns.settimeout(3)\ns.connect(('127.0.0.1', {port}))\n"),
        "kill_parent": f"import os, signal\nos.kill({me}, signal.SIGKILL)\n",
        "kill_parent_group": f"import os, signal\nos.killpg({group}, signal.SIGKILL)\n",
        "kill_launcher": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    }


def _run_hostile(mode: str, tmp: Path, port: int, names=None, signals=True) -> dict:
    """Results by name; the kill_* programs only run where ``signals`` says the
    box cannot reach our processes (else a failure would take pytest down)."""
    programs = _hostile_programs(tmp, port)
    names = [n for n in names or programs if signals or not n.startswith("kill_")]
    (tmp / "boxes").mkdir()
    box = Sandbox(FAST, isolation=mode, tmp_root=str(tmp / "boxes"))
    results = box.run_many([programs[n] for n in names])
    return dict(zip(names, results))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, server, isolation):
    os.environ[SECRET_NAME] = "hunter2"  # the parent's secret; the box must not see it
    tmp = tmp_path_factory.mktemp("hostile")
    try:
        yield tmp, _run_hostile("auto", tmp, server.getsockname()[1], signals=_contains_signals(isolation))
    finally:
        os.environ.pop(SECRET_NAME, None)


def _no_connection(server):
    with pytest.raises(BlockingIOError):
        server.accept()


def test_isolation_is_recorded(isolation):
    print(f"sandbox isolation: {isolation}")
    assert "limits: wall 2 s, cpu 3 s, memory 256 MiB, file 4 MiB, processes 8, open files 64" in isolation


@pytest.mark.parametrize("name", ["loop", "sleep", "fork_bomb", "escape_group"])
def test_hanging_programs_time_out(hostile, name):
    result = hostile[1][name]
    assert (result.passed, result.status) == (False, "timeout")
    assert result.reason == "timed out after 2 s"
    assert result.duration < 2.0 + 3.0 + 1.0  # wall limit + the parent's backstop + slack


def test_nothing_outlives_its_box(hostile):
    """No process of any box survives, however it tried to escape its group."""
    tmp = hostile[0]
    leftovers = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if str(tmp / "boxes").encode() in cmdline:
            leftovers.append(pid)
    assert leftovers == []
    assert list((tmp / "boxes").iterdir()) == []  # every workdir deleted


def test_memory_bomb_is_stopped(hostile):
    result = hostile[1]["memory_bomb"]
    assert (result.passed, result.status) == (False, "memory")
    assert result.reason.startswith("MemoryError at line 3")


def test_huge_file_is_stopped(hostile):
    result = hostile[1]["huge_file"]
    assert (result.passed, result.status) == (False, "limit")
    assert result.reason.startswith("OSError: [Errno 27] File too large")


def _escapes(tmp: Path) -> list[Path]:
    """Host paths the write_* programs aimed at; none may exist afterwards."""
    me = os.getpid()
    targets = [
        tmp / "outside.txt",
        ROOT / "SANDBOX_ESCAPE.txt",
        Path(f"/tmp/sandbox-escape-{me}.txt"),
        Path(f"/root/.sandbox-escape-{me}"),
    ]
    return [p for p in targets if p.exists()]


@pytest.mark.parametrize("name", ["write_parent_tmp", "write_repo", "write_root_home"])
def test_writes_outside_the_workdir_fail(hostile, name):
    tmp, results = hostile
    result = results[name]
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason.split(":")[0] in ("PermissionError", "OSError", "FileNotFoundError")
    assert _escapes(tmp) == []


def test_writes_to_tmp_stay_in_the_box(hostile):
    """/tmp is the box's own (namespaces) or closed (Landlock); never the host's."""
    assert hostile[1]["write_tmp"].status in ("passed", "failed")
    assert _escapes(hostile[0]) == []


def test_parent_environment_is_invisible(hostile):
    result = hostile[1]["read_env"]
    assert result.passed, result.reason
    names = eval(result.stdout)  # the program printed a sorted list of names
    assert SECRET_NAME in os.environ and SECRET_NAME not in names
    assert set(names) <= {"HOME", "LC_ALL", "PATH", "PYTHONHASHSEED", "PYTHONIOENCODING", "TMPDIR"}


@pytest.mark.parametrize("name", ["socket", "raw_socket"])
def test_network_is_unreachable(hostile, server, name):
    result = hostile[1][name]
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason.split(":")[0] in ("OSError", "PermissionError", "ConnectionRefusedError")
    _no_connection(server)


@pytest.mark.parametrize("name", ["kill_parent", "kill_parent_group", "kill_launcher"])
def test_parent_cannot_be_signalled(hostile, name):
    if name not in hostile[1]:
        pytest.skip("no pid namespace or landlock signal scoping here: not risking this pytest process")
    result = hostile[1][name]
    assert (result.passed, result.status) == (False, "failed")
    assert result.reason.split(":")[0] in ("ProcessLookupError", "PermissionError")
    assert os.getpgid(0) == os.getpgid(os.getpid())  # still here, same group


def test_kill_everything_reaches_nothing(isolation, tmp_path):
    if not _contains_signals(isolation):
        pytest.skip("no pid namespace or landlock signal scoping here: kill(-1) would hit our processes")
    result = Sandbox(FAST, tmp_root=str(tmp_path)).run(
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\nprint('alive')\n"
    )
    assert result.passed and result.stdout == "alive\n"


@pytest.mark.parametrize("mode", ["userns", "none"])
def test_weaker_modes_still_contain(mode, tmp_path, server, monkeypatch):
    """The degraded modes, where this machine allows them (none: with Landlock)."""
    text = _mode_isolation(mode)
    if text is None or (mode == "none" and "no signals out of the box" not in text):
        pytest.skip(f"isolation {mode!r} is not contained on this machine: {text}")
    monkeypatch.setenv(SECRET_NAME, "hunter2")
    failing = [
        "write_parent_tmp",
        "write_repo",
        "write_root_home",
        "socket",
        "raw_socket",
        "kill_parent",
        "kill_parent_group",
        "kill_launcher",
    ]
    names = failing + ["read_env", "huge_file", "sleep", "write_tmp"]
    results = _run_hostile(mode, tmp_path, server.getsockname()[1], names)
    if str(ROOT).startswith("/tmp/"):
        # A checkout under /tmp sits where the box mounts its own private /tmp: the
        # write lands there and vanishes with the box; _escapes below checks the host.
        failing.remove("write_repo")
    assert {n: results[n].status for n in failing + ["huge_file", "sleep"]} == {
        **{n: "failed" for n in failing},
        "huge_file": "limit",
        "sleep": "timeout",
    }
    assert results["read_env"].passed and SECRET_NAME not in results["read_env"].stdout
    assert _escapes(tmp_path) == []
    _no_connection(server)


# ------------------------------------------------------------ known programs


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    return Sandbox(FAST, tmp_root=str(tmp_path_factory.mktemp("known")))


KNOWN = {
    "passing": ("def f(x):\n    return 2 * x\n\nassert f(3) == 6\nprint('ok')\n", "passed", None),
    "failing": (
        "def f(x):\n    return x\n\nassert f(3) == 6\n",
        "failed",
        "AssertionError at line 4: assert f(3) == 6",
    ),
    "assert_message": (
        "assert 1 + 1 == 3, 'math is broken'\n",
        "failed",
        "AssertionError: math is broken at line 1: assert 1 + 1 == 3, 'math is broken'",
    ),
    "syntax_error": ("def f(:\n    pass\n", "failed", "SyntaxError: invalid syntax at line 1: def f(:"),
    "name_error": (
        "print(undefined_name)\n",
        "failed",
        "NameError: name 'undefined_name' is not defined at line 1: print(undefined_name)",
    ),
    "segfault": ("import ctypes\nctypes.string_at(0)\n", "crashed", "killed by SIGSEGV"),
    "early_exit": ("import sys\nsys.exit(0)\nassert False\n", "failed", "exited with code 0 before the end"),
    "hard_exit": ("import os\nos._exit(0)\n", "failed", "exited before the end (exit code 0)"),
    "exit_code": ("import sys\nsys.exit(3)\n", "failed", "exited with code 3 before the end"),
    "hanging": ("import time\ntime.sleep(30)\n", "timeout", "timed out after 2 s"),
}


def test_known_programs_get_known_verdicts(box):
    names = list(KNOWN)
    results = box.run_many([KNOWN[n][0] for n in names])  # also: results come back in order
    got = {n: (r.status, r.reason) for n, r in zip(names, results)}
    assert got == {n: (status, reason) for n, (_, status, reason) in KNOWN.items()}
    by_name = dict(zip(names, results))
    assert by_name["passing"].passed and by_name["passing"].stdout == "ok\n"
    assert by_name["passing"].exit_code == 0 and by_name["passing"].stderr == ""
    assert "Traceback" in by_name["failing"].stderr and "<string>" not in by_name["failing"].stderr
    assert sum(r.passed for r in results) == 1


def test_output_keeps_a_capped_tail(tmp_path):
    box = Sandbox(Limits(wall_s=5, output_kb=4), tmp_root=str(tmp_path))
    result = box.run("for i in range(100000):\n    print(i)\n")
    assert result.passed
    assert len(result.stdout.encode()) <= 4096
    assert result.stdout.endswith("99998\n99999\n")


def test_workdir_is_private_and_writable(box):
    result = box.run(
        "import os\nopen('a.txt', 'w').write('x' * 10)\nprint(os.path.getsize('a.txt'), "
        "os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n"
    )
    assert result.passed and result.stdout == "10 True\n"


def test_bad_limits_are_one_line_errors():
    with pytest.raises(FactoryError, match="sandbox limit wall_s must be a positive number, got 0"):
        Limits(wall_s=0)
    with pytest.raises(FactoryError, match="sandbox isolation must be one of auto, ns, userns, none"):
        Sandbox(isolation="chroot")


def test_runner_lines_are_parsed_and_stripped():
    token = "0123abcd"
    err = "Traceback...\nValueError: x\n\n0123abcd failed ValueError: x at line 2: raise ValueError('x')\n"
    assert find_told(err, token) == ("failed", "ValueError: x at line 2: raise ValueError('x')")
    assert strip_token(err, token) == "Traceback...\nValueError: x\n"
    assert strip_token("out\n\n0123abcd done \n", token) == "out\n"
    assert find_told("no token here\n", token) is None
