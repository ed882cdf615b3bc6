"""Run untrusted Python (model-generated code) in a box.

Each program runs in its own process tree with CPU, wall-clock, memory
(RLIMIT_AS), file-size, open-file and process limits, a cleared environment,
stdin from /dev/null and a throwaway working directory. On top of that the
strongest isolation the machine allows is used, and recorded in
``Result.isolation``:

``ns``      (root) new pid, network, mount, ipc and uts namespaces; the program
            runs as a random unprivileged uid with no capabilities and
            no_new_privs; the whole filesystem is read-only except a private
            size-capped tmpfs working dir; /root and the caller's home are
            hidden (the interpreter's own directory stays visible); a private
            /proc shows only the box's processes.
``userns``  (any user, where unprivileged user namespaces are allowed) the
            same namespaces inside a new user namespace; the program runs in a
            nested user namespace without capabilities.
``none``    no namespaces: rlimits, a process group, the launcher as subreaper
            (leftovers are killed), as root a random uid (or root with every
            capability dropped when the interpreter is not reachable by other
            users); sockets are refused at the Python level.

In every mode Landlock, where the kernel has it, adds: writes only inside the
workdir, reads only in system and interpreter dirs (in /proc only listings),
no TCP, and no signals to processes outside the box. ``auto`` (the default)
tries the modes in the order above. The parent never waits on the child beyond
the wall limit: the box's init kills the program at the limit, the parent kills
the whole process group a little later as a backstop, and with a pid namespace
the kernel kills everything left in it when that init exits. Output is read
concurrently and only a tail is kept.

A program passes when it runs to its end: a runner executes it and then
prints a pass line made from 16 random bytes, so ``sys.exit(0)`` or
``os._exit(0)`` halfway (which would skip the tests appended to a completion)
counts as a failure. The runner makes those bytes itself and announces the line
to the parent on the status pipe, which it closes before the program starts;
afterwards the bytes exist only on the interpreter's value stack (see RUNNER),
so no argv, environment, file, fd, module, global, local, closure, gc-tracked
object or other process in the box holds them, and the launcher and the box's
init are not dumpable (their /proc files are closed to the program). Several
pass-shaped lines fail the program, so printing candidates does not help.

What no harness that runs the tests in the program's own process can close: a
program may rewrite its own interpreter before the tests run (a trace function
that jumps over them, patched test helpers, an ``__eq__`` that is always true),
or read its own memory (ctypes; /proc/self/mem where Landlock is missing) to
find the bytes. ``runtime_access`` names code that reaches for those tools;
verdicts on such code are not used as training signal.

This file is also the launcher, run as ``__main__`` in a fresh ``python -I -S``.
Every program pays for that start-up, so the launcher half comes first and
imports only ``ctypes``, ``os`` and ``sys`` (resource, select and stat when it
needs them); the parent half, with its heavier imports, follows the
``__main__`` guard.
"""

from __future__ import annotations

import ctypes
import os
import sys

# ---------------------------------------------------- launcher (child side)
# Process tree: parent -> L0 (this file, new session) -> L1 (pid 1 of the new
# pid namespace: mounts, reaps, reports) -> L2 (limits, drops privileges, execs
# the runner). L0/L1 report to the parent as "KEY TEXT" lines on ``status_fd``.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NS_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECUREBITS, PR_CAPBSET_DROP = 1, 4, 28, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # one number on every arch
AT_FDCWD, AT_RECURSIVE, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = -100, 0x8000, 1, 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2
SIGKILL = 9  # the signal module costs an enum import; Linux numbers are fixed
BOX_DIR = "/tmp"  # the working dir as the program sees it, in the namespaced modes
_libc = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _prctl(option: int, arg: int = 0) -> None:
    _check(_c().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None):
    def enc(s):
        return None if s is None else s.encode()

    _check(_c().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _syscall(number: int, *args, what: str) -> int:
    return _check(_c().syscall(ctypes.c_long(number), *args), what)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _tell(cfg: dict, key: str, text) -> None:
    line = f"{key} {' '.join(str(text).split())}\n"
    try:
        os.write(cfg["status_fd"], line.encode("utf-8", "replace"))
    except OSError:
        pass


def _launch(cfg: dict) -> None:
    """L0: enter namespaces and fork the box's init (L1); it reports, we wait."""
    _prctl(PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() != cfg["parent"]:  # the parent died before the line above
        os._exit(1)
    try:
        mode, notes = _enter_namespaces(cfg)
        # neither we nor the box's init (our fork) may be opened through /proc by
        # the program: our status pipe carries the parent's verdict
        _prctl(PR_SET_DUMPABLE, 0)
    except OSError as e:
        _tell(cfg, "error", e)
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        try:
            _box_init(cfg, mode, notes)
        except BaseException as e:  # noqa: BLE001 - report anything, never return into L0's code
            _tell(cfg, "error", f"{type(e).__name__}: {e}")
        os._exit(1)
    os.waitpid(pid, 0)
    os._exit(0)


def _enter_namespaces(cfg: dict) -> tuple[str, list[str]]:
    """Unshare what is allowed, strongest first; ``notes`` say what was refused."""
    wanted, notes = cfg["mode"], []
    if wanted in ("auto", "ns"):
        if os.geteuid() == 0:
            try:
                _check(_c().unshare(NS_FLAGS), "unshare")
                return "ns", notes
            except OSError as e:
                if wanted == "ns":
                    raise
                notes.append(f"namespaces refused ({e.strerror})")
        elif wanted == "ns":
            raise OSError(1, "isolation 'ns' needs root")
    if wanted in ("auto", "userns"):
        try:
            _enter_user_namespace(NS_FLAGS, inner_id=0)
            return "userns", notes
        except OSError as e:
            if wanted == "userns":
                raise
            notes.append(f"user namespaces refused ({e.strerror})")
    return "none", notes


def _enter_user_namespace(extra: int, inner_id: int) -> None:
    """Unshare a user namespace (plus ``extra``) where our uid/gid is ``inner_id``."""
    uid, gid = os.geteuid(), os.getegid()
    _check(_c().unshare(CLONE_NEWUSER | extra), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inner_id} {uid} 1\n")
    _write("/proc/self/gid_map", f"{inner_id} {gid} 1\n")


def _box_init(cfg: dict, mode: str, notes: list[str]) -> None:
    """L1: set up the filesystem, start the program, enforce the wall limit,
    reap everything, report."""
    _prctl(PR_SET_PDEATHSIG, SIGKILL)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans come back to us, not to the host's init
    fs_notes = _setup_filesystem(cfg) if mode != "none" else ["no mount namespace: workdir on disk"]
    uid = _pick_uid(cfg, mode)
    landlock = _landlock_abi()
    _tell(cfg, "isolation", _describe(cfg, mode, uid, landlock, notes + fs_notes))
    pid = os.fork()
    if pid == 0:
        _start_program(cfg, mode, uid, landlock)
    status = _wait_program(pid, cfg["wall"])
    if mode == "none":
        _sweep_children(pid)  # with a pid namespace the kernel does this when we exit
    _tell(cfg, "wait", status)
    os._exit(0)  # as pid 1 this tears down whatever the program left running


def _wait_program(pid: int, wall: float):
    """The program's wait status, or "timeout" (then it has been killed)."""
    import select  # launcher: imported where used, every program pays for its start-up

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # old kernel: the parent's deadline still holds
        return os.waitpid(pid, 0)[1]
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if not poller.poll(int(wall * 1000)):
        _kill_group(pid)
        os.waitpid(pid, 0)
        return "timeout"
    return os.waitpid(pid, 0)[1]


def _kill_group(pid: int) -> None:
    """SIGKILL the program's process group (its leader is ``pid``): one call
    stops a fork bomb, whose pending forks fail once the signal is queued."""
    for kill in (os.killpg, os.kill):  # the leader may not have made its group yet
        try:
            kill(pid, SIGKILL)
        except OSError:
            pass


def _sweep_children(group: int) -> None:
    """Kill and reap every process still below us (we are their subreaper):
    without a pid namespace, leftovers that left the process group go here."""
    import time  # launcher: imported where used, every program pays for its start-up

    me = os.getpid()
    while True:
        _kill_group(group)
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        for kid in kids:
            try:
                os.kill(kid, SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.001)  # the killed are still dying, or their orphans just arrived


def _setup_filesystem(cfg: dict) -> list[str]:
    """Private mounts: everything read-only, home dirs hidden (the interpreter
    kept), a size-capped tmpfs on /tmp as the working dir, our own /proc."""
    with open(os.path.join(cfg["workdir"], "program.py"), encoding="utf-8") as f:
        source = f.read()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    notes = []
    for hidden in cfg["mask"]:
        try:
            _hide(hidden, cfg["keep"], "size=1m,mode=0755")
            notes.append(f"{hidden} hidden")
        except OSError as e:
            notes.append(f"{hidden} NOT hidden ({e.strerror})")
    try:
        _set_readonly_recursive("/")
        notes.append("filesystem read-only")
    except OSError as e:
        notes.append(f"filesystem NOT read-only ({e.strerror})")
    # /tmp exists and is traversable everywhere, unlike the parent's temp dir
    _hide(BOX_DIR, cfg["keep"], f"size={cfg['disk']},mode=1777")
    cfg["workdir"] = BOX_DIR
    with open(os.path.join(BOX_DIR, "program.py"), "w", encoding="utf-8") as f:
        f.write(source)
    notes.append(f"workdir: a private {cfg['disk'] >> 20} MiB tmpfs on {BOX_DIR}")
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        notes.append("private /proc")
    except OSError as e:
        notes.append(f"host /proc visible ({e.strerror})")
    return notes


def _hide(path: str, keep: list[str], options: str) -> None:
    """Cover ``path`` with a fresh tmpfs, re-attaching the subtrees of it
    that are in ``keep`` (the interpreter must stay reachable)."""
    keep = [k for k in keep if k == path or k.startswith(path.rstrip("/") + "/")]
    trees = [
        (
            k,
            _syscall(
                SYS_OPEN_TREE,
                ctypes.c_int(AT_FDCWD),
                k.encode(),
                ctypes.c_uint(OPEN_TREE_CLONE | AT_RECURSIVE | os.O_CLOEXEC),
                what=f"open_tree {k}",
            ),
        )
        for k in keep
    ]
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for k, fd in trees:
        os.makedirs(k, exist_ok=True)
        _syscall(
            SYS_MOVE_MOUNT,
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(AT_FDCWD),
            k.encode(),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
            what=f"move_mount {k}",
        )
        os.close(fd)


def _set_readonly_recursive(path: str) -> None:
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    _syscall(
        SYS_MOUNT_SETATTR,
        ctypes.c_int(AT_FDCWD),
        path.encode(),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        what=f"mount_setattr {path}",
    )


# Landlock (unprivileged LSM): writes only in the workdir, reads only where
# the interpreter and the system libraries live, no TCP, no signals or abstract
# unix sockets outside the box. Rights grow with the kernel's ABI version.
# /proc may be listed but no file in it read: not /proc/self/mem (the runner's
# memory holds its pass line's secret), nor cmdline, environ or fd of anyone.
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_TRUNCATE, LL_IOCTL_DEV = 1 << 14, 1 << 15
SYS_LL_CREATE, SYS_LL_ADD_RULE, SYS_LL_RESTRICT = 444, 445, 446
LL_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/dev",
    "/sys",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
)


def _landlock_abi() -> int:
    return max(0, _c().syscall(ctypes.c_long(SYS_LL_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint(1)))


def _landlock(cfg: dict, abi: int) -> None:
    import stat  # launcher: imported where used, every program pays for its start-up

    fs_all = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1
    file_rights = fs_all & (LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV)
    handled = (ctypes.c_uint64 * 3)(fs_all, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _syscall(
        SYS_LL_CREATE, ctypes.byref(handled), ctypes.c_size_t(size), ctypes.c_uint(0), what="landlock_create_ruleset"
    )

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    python_dir = os.path.dirname(os.path.realpath(cfg["python"]))
    rules = [(p, LL_EXECUTE | LL_READ_FILE | LL_READ_DIR) for p in (*LL_READ_PATHS, *cfg["keep"], python_dir)]
    rules += [
        ("/dev/null", LL_READ_FILE | LL_WRITE_FILE | LL_TRUNCATE),
        (cfg["workdir"], fs_all),
        ("/proc", LL_READ_DIR),
    ]
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not on this machine
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= file_rights
            rule = PathBeneath(rights & fs_all, fd)
            _syscall(
                SYS_LL_ADD_RULE,
                ctypes.c_int(ruleset),
                ctypes.c_int(1),
                ctypes.byref(rule),
                ctypes.c_uint(0),
                what=f"landlock_add_rule {path}",
            )
        finally:
            os.close(fd)
    _syscall(SYS_LL_RESTRICT, ctypes.c_int(ruleset), ctypes.c_uint(0), what="landlock_restrict_self")
    os.close(ruleset)


def _pick_uid(cfg: dict, mode: str) -> int | None:
    """A random unprivileged uid (root only): its own count for RLIMIT_NPROC
    and no access to the parent's files or processes."""
    if os.geteuid() != 0 or mode == "userns":
        return None
    if mode == "none" and not _reachable_by_others(cfg):
        return None  # a stranger could not even start the interpreter or enter the workdir
    uid = 1_000_000 + int.from_bytes(os.urandom(4), "little") % (1 << 30)
    if mode == "none":
        os.chown(cfg["workdir"], uid, uid)
    return uid


def _reachable_by_others(cfg: dict) -> bool:
    """Can a stranger uid run our interpreter, read its standard library and
    enter the workdir?"""
    import stat  # launcher: imported where used, every program pays for its start-up

    for target in (os.path.realpath(cfg["python"]), os.path.dirname(os.__file__), cfg["workdir"]):
        path = target
        while True:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                return False
            need = stat.S_IXOTH | stat.S_IROTH if path == target else stat.S_IXOTH
            if mode & need != need:
                return False
            if path == "/":
                break
            path = os.path.dirname(path)
    return True


def _describe(cfg: dict, mode: str, uid: int | None, landlock: int, notes: list[str]) -> str:
    parts = {
        "ns": ["namespaces: pid, net, mount, ipc, uts"],
        "userns": ["namespaces: user, pid, net, mount, ipc, uts"],
        "none": ["no namespaces (network blocked at the Python level)"],
    }[mode]
    if uid is not None:
        parts.append(f"random uid {uid}, no capabilities, no_new_privs")
    elif mode == "userns":
        parts.append("nested user namespace, no capabilities, no_new_privs")
    elif os.geteuid() == 0:
        parts.append(
            "uid 0 with every capability dropped, no_new_privs (the interpreter is not reachable "
            "by other users; process count not limited)"
        )
    else:
        parts.append(f"caller's uid {os.geteuid()}, no_new_privs")
    parts += notes
    if landlock:
        parts.append(
            f"landlock ABI {landlock}: writes only in the workdir, reads only system and interpreter dirs "
            "(in /proc only listings)"
            + (", no TCP" if landlock >= 4 else "")
            + (", no signals out of the box" if landlock >= 6 else "")
        )
    else:
        parts.append("no landlock")
    parts.append(
        f"limits: wall {cfg['wall']:g} s, cpu {cfg['cpu']} s, memory {cfg['memory'] >> 20} MiB, "
        f"file {cfg['fsize'] >> 20} MiB, processes {cfg['nproc']}, open files {cfg['nofile']}"
    )
    return "; ".join(parts)


def _start_program(cfg: dict, mode: str, uid: int | None, landlock: int) -> None:
    """L2: limits, privileges, a clean environment, exec the runner. Never returns."""
    try:
        os.setpgid(0, 0)  # a group of its own, for the box's init to kill
        _prctl(PR_SET_DUMPABLE, 1)  # L0/L1 are not; our own /proc/self files must stay ours
        os.set_inheritable(cfg["status_fd"], True)  # the runner announces itself on it, then closes it
        os.closerange(3, cfg["status_fd"])
        os.closerange(cfg["status_fd"] + 1, 1 << 16)
        _set_limits(cfg)
        _drop_privileges(mode, uid)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_PDEATHSIG, SIGKILL)  # cleared by a uid change, so set again
        if landlock:
            _landlock(cfg, landlock)
        workdir = cfg["workdir"]
        os.chdir(workdir)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONHASHSEED": "0",
        }
        nonet = "1" if mode == "none" else "0"
        os.execve(
            cfg["python"],
            [
                cfg["python"],
                "-I",
                "-S",
                "-c",
                RUNNER,
                str(cfg["status_fd"]),
                os.path.join(workdir, "program.py"),
                nonet,
            ],
            env,
        )
    except BaseException as e:  # noqa: BLE001
        _tell(cfg, "error", f"could not start the program: {type(e).__name__}: {e}")
    os._exit(127)


def _set_limits(cfg: dict) -> None:
    import resource  # launcher: imported where used, every program pays for its start-up

    limits = [
        (resource.RLIMIT_CPU, cfg["cpu"], cfg["cpu"] + 1),
        (resource.RLIMIT_AS, cfg["memory"], None),
        (resource.RLIMIT_FSIZE, cfg["fsize"], None),
        (resource.RLIMIT_NPROC, cfg["nproc"], None),
        (resource.RLIMIT_NOFILE, cfg["nofile"], None),
        (resource.RLIMIT_CORE, 0, None),
    ]
    for which, soft, hard in limits:
        resource.setrlimit(which, (soft, soft if hard is None else hard))


def _drop_privileges(mode: str, uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # root to non-root clears every capability
    elif mode == "userns":
        # a nested user namespace where we are uid 1000: exec grants no
        # capabilities there, and it owns none of the mounts L1 set up
        _enter_user_namespace(0, inner_id=1000)
    elif os.geteuid() == 0:
        _drop_root_capabilities()


def _drop_root_capabilities() -> None:
    """Stay uid 0 but hold no capability, now or after exec (securebits)."""
    for cap in range(64):
        if _c().prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) < 0:
            break  # past the last capability this kernel knows
    noroot, noroot_locked, keep_caps_locked, no_ambient, no_ambient_locked = 1, 2, 32, 64, 128
    _prctl(PR_SET_SECUREBITS, noroot | noroot_locked | keep_caps_locked | no_ambient | no_ambient_locked)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _check(_c().capset(ctypes.byref(header), ctypes.byref(data)), "capset")


# ------------------------------------------------- the runner, inside the box
# Executed as ``python -I -S -c RUNNER FD PATH NONET``. Before the program
# starts it writes ``runner PASS TOLD`` on FD (the status pipe) and closes it:
# PASS is the line it prints on stdout, as ``PASS done``, once the program ran
# to its end; TOLD marks its ``TOLD KIND REASON`` failure lines on stderr.
#
# PASS is 16 random bytes that live nowhere the program can name: not in argv,
# the environment, a file, an open fd or any module, global, local or closure.
# They sit on the interpreter's value stack of the runner's last statement,
# pushed before run() starts the program and consumed by C code after it
# returns. After run() returns nothing Python-level that the program could have
# patched runs: bytes.hex, str.__mod__, str.encode, and os.write and os._exit
# loaded before the program started. A program that exits early (os._exit,
# an exec, a signal) never gets that far; one that falls through a patched
# exit hands bytes.hex a 0, which raises. What stays open is an attack on the
# process itself (reading its own memory, a trace function that skips the
# tests): see the module doc.
RUNNER = r"""
import os, sys
write, exit_now, urandom = os.write, os._exit, os.urandom
fd, path, nonet = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
del sys.argv[1:]
sys.argv[0] = path
told = urandom(8).hex()  # a program that forges a failure line only fails itself

def flush():
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass

def tell(kind, text):
    flush()
    line = "\n%s %s %s\n" % (told, kind, " ".join(str(text).split())[:300])
    try:
        write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass

def where(exc, src):
    n, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            n = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == path:
        n = exc.lineno
    lines = src.splitlines()
    if n is None or not 0 < n <= len(lines):
        return ""
    return " at line %d: %s" % (n, lines[n - 1].strip()[:120])

def describe(exc, src):
    if isinstance(exc, SyntaxError):
        return "%s: %s%s" % (type(exc).__name__, exc.msg, where(exc, src))
    text = str(exc)
    return type(exc).__name__ + (": " + text if text else "") + where(exc, src)

def announce(secret):
    # built byte by byte and wiped, so no copy of the whole pass line is left in memory
    line = bytearray(b"runner ")
    for i, b in enumerate(secret):
        line += b"%s%02x" % (b":" if i else b"", b)
    line += b" " + told.encode() + b"\n"
    try:
        write(fd, line)
    finally:
        line[:] = bytes(len(line))
        os.close(fd)
    return secret

def run(path):
    with open(path, encoding="utf-8") as f:
        src = f.read()
    try:
        exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    except SystemExit as e:
        tell("exit", "exited with code %r before the end" % (e.code,))
        exit_now(e.code if isinstance(e.code, int) and 0 < e.code < 256 else 1)
    except BaseException as e:
        kind = "memory" if isinstance(e, MemoryError) else "limit" if getattr(e, "errno", 0) == 27 else "failed"
        try:
            import traceback
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # not the runner's frame
            tell(kind, describe(e, src))
        except BaseException:
            tell(kind, type(e).__name__)
        exit_now(1)
    else:
        flush()
        return ":"
    return 0

if nonet:
    import socket, _socket
    def denied(*a, **k):
        raise OSError(101, "network disabled in the sandbox")
    socket.socket = _socket.socket = socket.create_connection = denied

try:
    exit_now(write(1, ("\n%s done \n" % bytes.hex(announce(urandom(16)), run(path))).encode()) * 0)
except BaseException:
    exit_now(1)
"""


if __name__ == "__main__":
    import marshal

    _launch(marshal.loads(bytes.fromhex(sys.argv[-1])))


# ---------------------------------------------------------------- parent side
# (imported only by the parent: the launcher never gets past the guard above)

import ast  # noqa: E402
import marshal  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

from foundation.errors import FactoryError  # noqa: E402

MODES = ("auto", "ns", "userns", "none")
STATUSES = ("passed", "failed", "timeout", "memory", "limit", "crashed", "killed", "error")
_GRACE_S = 0.5  # how long to keep reading once the launcher has exited
_BACKSTOP_S = 3.0  # slack over the wall limit for start-up before the parent kills
_probe_cache: dict[str, str] = {}


@dataclass
class Limits:
    """Per-program limits. ``cpu_s`` defaults to one second over the wall
    limit: a single-threaded program then always meets the wall limit first
    (equal limits raced, and the same loop was reported either way), while a
    program burning several cores still meets the CPU limit."""

    wall_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    disk_mb: int = 64  # size of the private working dir (tmpfs, namespaced modes)
    processes: int = 16  # tasks (processes and threads) of the program's uid
    open_files: int = 64
    output_kb: int = 64  # tail kept per stream

    def __post_init__(self):
        for name in ("wall_s", "memory_mb", "file_mb", "disk_mb", "processes", "open_files", "output_kb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise FactoryError(f"sandbox limit {name} must be a positive number, got {value!r}")

    @property
    def cpu(self) -> int:
        if self.cpu_s is not None:
            return max(1, int(round(self.cpu_s)))
        return int(math.ceil(self.wall_s)) + 1


@dataclass
class Result:
    """What happened to one program. ``reason`` is one short line (None when passed)."""

    passed: bool
    status: str  # one of STATUSES
    reason: str | None
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0  # seconds, as seen by the parent
    exit_code: int | None = None
    isolation: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Sandbox:
    """Runs programs with ``limits`` under ``isolation`` (see the module doc),
    ``workers`` at a time in ``run_many``."""

    def __init__(
        self, limits: Limits | None = None, isolation: str = "auto", workers: int = 2, tmp_root: str | None = None
    ):
        if isolation not in MODES:
            raise FactoryError(f"sandbox isolation must be one of {', '.join(MODES)}, got {isolation!r}")
        self.limits = limits or Limits()
        self.isolation = isolation
        self.workers = max(1, int(workers))
        self.tmp_root = tmp_root

    def run(self, source: str) -> Result:
        return _run_one(source, self.limits, self.isolation, self.tmp_root)

    def run_many(self, sources: list[str]) -> list[Result]:
        """Results in the order of ``sources``, ``workers`` programs at a time
        (the threads only wait on child processes)."""
        if self.workers == 1 or len(sources) <= 1:
            return [self.run(s) for s in sources]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, sources))

    def describe(self) -> str:
        """The isolation this machine gives (runs an empty program once per
        mode and limits)."""
        key = f"{self.isolation} {self.limits}"
        if key not in _probe_cache:
            result = self.run("pass\n")
            if result.status != "passed":
                return f"unavailable: {result.reason}"
            _probe_cache[key] = result.isolation
        return _probe_cache[key]


def run(source: str, limits: Limits | None = None, isolation: str = "auto") -> Result:
    return Sandbox(limits, isolation).run(source)


def _run_one(source: str, limits: Limits, mode: str, tmp_root: str | None) -> Result:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="sandbox-", dir=tmp_root)
    status_r, status_w = os.pipe()
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        config = _launch_config(limits, mode, workdir, status_w)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOT, _launcher_file(workdir), marshal.dumps(config).hex()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            )
        except OSError as e:
            return Result(False, "error", f"sandbox: could not start: {e}", duration=time.monotonic() - start)
        finally:
            os.close(status_w)
        # the box's init enforces the wall limit; this deadline is the backstop
        deadline = start + limits.wall_s + _BACKSTOP_S
        streams, timed_out = _collect(proc, status_r, deadline, limits.output_kb * 1024)
        status_r = -1  # _collect closed it
        result = _verdict(streams, timed_out, limits)
        result.duration = time.monotonic() - start
        return result
    finally:
        if status_r >= 0:
            os.close(status_r)
        _remove_tree(workdir)


# The launcher is this file, run as __main__ from a code object compiled once
# per parent: a script gets no bytecode cache, and compiling it for every
# program would be a third of the launcher's CPU time.
_BOOT = (
    "import marshal, sys\n"
    "with open(sys.argv[1], 'rb') as f: code = marshal.loads(f.read())\n"
    "exec(code, {'__name__': '__main__', '__builtins__': __builtins__})"
)
_launcher_code: bytes | None = None


def _launcher_file(workdir: str) -> str:
    global _launcher_code
    if _launcher_code is None:
        with open(__file__, encoding="utf-8") as f:
            _launcher_code = marshal.dumps(compile(f.read(), __file__, "exec"))
    path = os.path.join(workdir, "launcher.bin")
    with open(path, "wb") as f:
        f.write(_launcher_code)
    return path


def _launch_config(limits: Limits, mode: str, workdir: str, status_fd: int) -> dict:
    home = os.path.realpath(os.path.expanduser("~"))
    return {
        "mode": mode,
        "workdir": os.path.realpath(workdir),
        "status_fd": status_fd,
        "parent": os.getpid(),
        "python": sys.executable,
        "keep": sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}),
        "mask": sorted({p for p in ("/root", home) if p not in ("/", "/tmp") and os.path.isdir(p)}),
        "wall": float(limits.wall_s),
        "cpu": limits.cpu,
        "memory": int(limits.memory_mb) << 20,
        "fsize": int(limits.file_mb) << 20,
        "disk": int(limits.disk_mb) << 20,
        "nproc": int(limits.processes),
        "nofile": int(limits.open_files),
    }


def _collect(proc: subprocess.Popen, status_fd: int, deadline: float, cap: int):
    """Read stdout, stderr and the status pipe until all close, the deadline
    passes, or the launcher has exited while leftovers still hold the pipes.
    Always kills the process group before reaping the launcher (so its pgid
    cannot have been reused), and closes every pipe."""
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(status_fd, selectors.EVENT_READ, "status")
    timed_out, exited_at = False, None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _GRACE_S:
                break
            for key, _ in sel.select(timeout=min(deadline - now, 0.2)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.data]
                buf += chunk
                if len(buf) > 2 * cap:  # keep a tail: the verdict is at the end
                    del buf[:-cap]
    finally:
        sel.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        os.close(status_fd)
    return {k: bytes(v[-cap:]) for k, v in bufs.items()}, timed_out


def _verdict(streams: dict[str, bytes], timed_out: bool, limits: Limits) -> Result:
    """The Result from what the box wrote: stdout, stderr and the status pipe,
    where the first line of each kind counts (the runner and the box's init
    write theirs before the program could reach the pipe, if it ever can)."""
    out = streams["stdout"].decode("utf-8", "replace")
    err = streams["stderr"].decode("utf-8", "replace")
    events: dict[str, str] = {}
    for line in streams["status"].decode("utf-8", "replace").splitlines():
        key, _, text = line.partition(" ")
        events.setdefault(key, text)
    pass_line, _, told_mark = events.get("runner", "").partition(" ")
    done = bool(_PASS_SHAPE.fullmatch(pass_line)) and f"\n{pass_line} done" in out
    forged = any(found != pass_line for found in _PASS_LINES.findall(out))
    told = find_told(err, told_mark) if told_mark else None
    if pass_line:
        out = strip_token(out, pass_line)
    if told_mark:
        err = strip_token(err, told_mark)

    def result(passed, status, reason, code=None):
        return Result(passed, status, reason, out, err, exit_code=code, isolation=events.get("isolation", ""))

    if timed_out or events.get("wait") == "timeout":
        return result(False, "timeout", f"timed out after {limits.wall_s:g} s")
    if "error" in events:
        return result(False, "error", f"sandbox: {events['error']}")
    wait = events.get("wait", "None")
    if wait == "None":
        return result(False, "error", f"sandbox: the launcher ended without a verdict {_last_line(err)}".strip())
    wait = int(wait)
    if os.WIFSIGNALED(wait):
        return _signalled(result, os.WTERMSIG(wait), limits)
    code = os.WEXITSTATUS(wait)
    if code == 0 and done:
        if forged:  # one of several candidates the program printed may be right: none counts
            return result(False, "failed", "printed a line shaped like the runner's pass line", code)
        return result(True, "passed", None, 0)
    if told is not None:
        kind, text = told
        return result(False, kind if kind in ("memory", "limit") else "failed", text, code)
    if code == 0:
        return result(False, "failed", "exited before the end (exit code 0)", code)
    return result(False, "failed", f"exit code {code} {_last_line(err)}".strip(), code)


_PASS_SHAPE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){15}")  # what the runner's bytes.hex(secret, ":") gives
_PASS_LINES = re.compile(rf"^({_PASS_SHAPE.pattern}) done\b", re.M)


def _signalled(result, sig: int, limits: Limits) -> Result:
    if sig == signal.SIGXCPU:
        return result(False, "timeout", f"CPU time limit of {limits.cpu} s exceeded", -sig)
    if sig == signal.SIGXFSZ:
        return result(False, "limit", f"file size limit of {limits.file_mb:g} MiB exceeded", -sig)
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return result(False, "killed" if sig == signal.SIGKILL else "crashed", f"killed by {name}", -sig)


def find_told(err: str, token: str) -> tuple[str, str] | None:
    """The runner's last ``TOKEN KIND TEXT`` line on stderr, as (kind, text)."""
    for line in reversed(err.splitlines()):
        if line.startswith(token + " "):
            kind, _, text = line[len(token) + 1 :].partition(" ")
            return kind, text.strip()
    return None


def strip_token(text: str, token: str) -> str:
    """The stream without the runner's token line (and the newline it added)."""
    at = text.rfind(f"\n{token} ")
    if at < 0:
        return text
    end = text.find("\n", at + 1)
    return text[:at] + (text[end + 1 :] if end >= 0 else "")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return f"({lines[-1][:200]})" if lines else ""


def _remove_tree(path: str) -> None:
    """Delete the work dir even if the program left unwritable dirs behind."""

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


# ------------------------------------------- code that can reach its own judge
# A verdict is only as good as the process it comes from: a program can always
# change what happens inside its own interpreter (see the module doc). These are
# the ways in; an answer that uses one is not trusted as a training example.
RUNTIME_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "sys",
        "builtins",
        "gc",
        "ctypes",
        "_ctypes",
        "importlib",
        "inspect",
        "atexit",
        "signal",
        "subprocess",
        "multiprocessing",
        "_thread",
        "mmap",
    }
)
RUNTIME_NAMES = frozenset(
    {"__import__", "__builtins__", "__loader__", "__spec__", "eval", "exec", "compile", "globals", "vars", "breakpoint"}
)
RUNTIME_ATTRIBUTES = frozenset(
    {
        "__globals__",
        "__code__",
        "__closure__",
        "__builtins__",
        "__traceback__",
        "__subclasses__",
        "__import__",
        "__loader__",
        "__spec__",
        "tb_frame",
        "tb_next",
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_trace",
        "f_lineno",
        "gi_frame",
        "cr_frame",
        "ag_frame",
    }
)
_RUNTIME_WORDS = re.compile(
    r"\b(?:import|from)\s+(?P<module>{})\b|\b(?P<name>{})\b|(?P<proc>/proc\b)".format(
        "|".join(sorted(RUNTIME_MODULES)), "|".join(sorted(RUNTIME_ATTRIBUTES | {"__import__", "__builtins__"}))
    )
)


def runtime_access(code: str) -> str | None:
    """How ``code`` reaches the interpreter that runs and judges it, in a few
    words ("imports os", "uses tb_frame", "reads /proc", ...), or None.

    Modules (os, sys, builtins, gc, ctypes, ...), the dynamic-import and
    evaluation builtins, frame and function internals, a computed name given
    to getattr, and any string naming /proc. Text that is not Python (an answer
    with prose around its code) is searched for imports, those names and /proc
    word by word. Meant for trusting verdicts (the pairs stage drops such answers),
    not for refusing to run a program."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        hit = _RUNTIME_WORDS.search(code)
        if hit is None:
            return None
        return f"imports {hit['module']}" if hit["module"] else f"uses {hit['name']}" if hit["name"] else "reads /proc"
    nodes = sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")), key=lambda n: (n.lineno, n.col_offset))
    for node in nodes:
        found = _runtime_node(node)
        if found:
            return found
    return None


def _runtime_node(node: ast.AST) -> str | None:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for module in modules:
            if module.split(".")[0] in RUNTIME_MODULES:
                return f"imports {module.split('.')[0]}"
    elif isinstance(node, ast.Name) and node.id in RUNTIME_NAMES:
        return f"uses {node.id}"
    elif isinstance(node, ast.Attribute) and node.attr in RUNTIME_ATTRIBUTES:
        return f"uses {node.attr}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc" in node.value:
        return "reads /proc"
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "delattr")
        and len(node.args) >= 2
    ):
        name = node.args[1]
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)) or name.value.startswith("__"):
            return f"uses {node.func.id} with a computed or hidden name"
    return None
