"""Run a job's python steps in one process and record how each one ends.

    python run_steps.py PLAN.json OUT.json

PLAN is [[label, [script-or--m, args...], {env}], ...]: each step runs, with
``env`` added to os.environ, as ``python script args`` would (``runpy``, as ``__main__``, its directory first on
sys.path), one after the other, whatever the previous one did, so a check
sees how far every step gets. Sharing the process saves NeMo's import (tens of
seconds) per step.

What a CPU cannot have is changed first, and only this (``cpu_stack``):
Megatron's Transformer-Engine-only fusions (rope fusion, persistent layer norm,
gradient-accumulation fusion) are off, since Transformer Engine does not install
without CUDA; the import's checkpoint save is synchronous (NeMo's importer saves
asynchronously, through a spawned manager process); torch.cuda.synchronize,
which Megatron's checkpoint writer calls to wait for device-to-host copies
(dist_checkpointing/strategies/filesystem_async.py), returns at once, there being
no device work to wait for; and torch.cuda.current_device names the CPU, where
Megatron's checkpoint saver puts the flag it broadcasts to all ranks
(strategies/state_dict_saver.py; gloo broadcasts CPU tensors). Each call of
either is recorded as a CUDA requirement met on the way (``cuda_calls``). With these the import saves a real NeMo 2
checkpoint and the job body goes on to its own first CUDA call. OUT gets one
record per step:

    {"label", "argv", "status": "ok" | "exit" | "raised", "exit_code",
     "exception": "Type: first line", "at": "file:line" (where it was raised),
     "frames": ["file:line", ...] (innermost last), "cuda_calls": ["file:line", ...]
     (callers of torch.cuda.synchronize), "stderr": the step's last lines}"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

CUDA_CALLS: list[str] = []
SITE = next((p for p in sys.path if p.endswith("site-packages")), None)


def short(path: str) -> str:
    """A frame's file relative to site-packages or the working tree where it is inside one."""
    for root in (SITE, str(Path.cwd())):
        if root and path.startswith(root + "/"):
            return path[len(root) + 1 :]
    return path


def frames_of(exc: BaseException) -> list[str]:
    return [f"{short(f.filename)}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)]


class Tee(io.TextIOBase):
    """The step's stderr, kept (for argparse's message) and passed on."""

    def __init__(self, stream):
        self.stream, self.buf = stream, io.StringIO()

    def write(self, s):
        self.buf.write(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()


def run_step(label: str, argv: list[str], env: dict) -> dict:
    rec = {"label": label, "argv": argv, "status": "ok", "exit_code": 0}
    os.environ.update(env)
    CUDA_CALLS.clear()
    tee = Tee(sys.stderr)
    saved = (list(sys.argv), list(sys.path))
    try:
        with contextlib.redirect_stderr(tee):
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                sys.path.insert(0, str(Path(argv[0]).parent))
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code:
            rec.update(status="exit", exit_code=code, exception=f"SystemExit: {e.code}", frames=frames_of(e))
    except BaseException as e:  # noqa: BLE001 - the record is the point: every failure is reported
        fr = frames_of(e)
        first = (str(e).strip().splitlines() or [""])[0]
        rec.update(status="raised", exit_code=1, exception=f"{type(e).__name__}: {first}"[:500], frames=fr)
        rec["at"] = fr[-1] if fr else None
        rec["chain"] = [f"{type(c).__name__}: {str(c)[:200]}" for c in _causes(e)]
    finally:
        sys.argv, sys.path[:] = saved
    rec["cuda_calls"] = sorted(set(CUDA_CALLS))
    rec["stderr"] = tee.buf.getvalue()[-3000:]
    return rec


def _causes(e: BaseException) -> list[BaseException]:
    out, seen = [], {id(e)}
    c = e.__cause__ or e.__context__
    while c is not None and id(c) not in seen:
        out.append(c)
        seen.add(id(c))
        c = c.__cause__ or c.__context__
    return out


TE_ONLY = ("apply_rope_fusion", "persist_layer_norm", "gradient_accumulation_fusion")


def cpu_stack() -> list[str]:
    """Turn off what only Transformer Engine / CUDA provide (see the module docstring);
    returns what was changed, for the record."""
    import importlib.util

    changed = []
    if importlib.util.find_spec("transformer_engine") is None:
        from megatron.core.transformer.transformer_config import TransformerConfig

        post_init = TransformerConfig.__post_init__

        def without_te(self):
            for key in TE_ONLY:
                setattr(self, key, False)
            post_init(self)

        TransformerConfig.__post_init__ = without_te
        changed.append(f"TransformerConfig: {', '.join(TE_ONLY)} = False (no Transformer Engine)")
    import functools

    import torch
    from nemo.lightning.io.connector import ModelConnector

    def synchronize(device=None):
        caller = sys._getframe(1)
        CUDA_CALLS.append(f"torch.cuda.synchronize at {short(caller.f_code.co_filename)}:{caller.f_lineno}")

    def current_device():
        caller = sys._getframe(1)
        CUDA_CALLS.append(f"torch.cuda.current_device at {short(caller.f_code.co_filename)}:{caller.f_lineno}")
        return "cpu"

    torch.cuda.synchronize, torch.cuda.current_device = synchronize, current_device
    changed.append("torch.cuda.synchronize returns at once, torch.cuda.current_device names the CPU; calls recorded")

    ModelConnector.nemo_setup = functools.partialmethod(ModelConnector.nemo_setup, ckpt_async_save=False)
    changed.append("ModelConnector.nemo_setup: MegatronStrategy(ckpt_async_save=False)")
    return changed


def main(plan: str, out: str) -> None:
    import torch

    assert not torch.cuda.is_available(), "the boundary check runs on a machine without CUDA"
    settings = cpu_stack()
    records = [run_step(label, argv, env) for label, argv, env in json.loads(Path(plan).read_text())]
    Path(out).write_text(json.dumps({"cpu_stack": settings, "steps": records}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
