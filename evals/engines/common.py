"""What the engines share: prompt rendering, stop strings, tool calls as text,
the model's content hash, and checks of engine settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evals.api import Completion, Request
from foundation import hashing
from foundation.artifacts import content_hash, read_manifest
from foundation.chat import for_template
from foundation.errors import FactoryError


def render_prompt(tokenizer, request: Request) -> str:
    """The text the model continues: a raw prompt as given, or the chat rendered with
    the tokenizer's template (tools passed through) and the assistant turn opened."""
    if request.prompt is not None:
        return request.prompt
    if not getattr(tokenizer, "chat_template", None):
        raise FactoryError(
            f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: no chat template, "
            "so chat requests cannot be rendered (give raw prompts or a model with a template)"
        )

    # A template that ignores tools would silently drop them: they are written
    # inline then, exactly as the sft stage trains tool calls for such templates.
    messages, tools = for_template(tokenizer, request.messages, request.tools)
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)


def cut_at_stop(text: str, stops: list[str] | None) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops or () if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def tool_calls_text(tool_calls: list[dict] | None) -> str:
    """OpenAI ``tool_calls`` as the text scorers read: one ``<tool_call>{json}</tool_call>``
    block per call, arguments decoded from their JSON string where possible."""
    blocks = []
    for call in tool_calls or ():
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass  # keep the raw string: the scorer reports the malformed call
        body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
        blocks.append(f"<tool_call>{body}</tool_call>")
    return "\n".join(blocks)


def model_hash(model: str) -> str | None:
    """Content hash of a local checkpoint: the artifact hash from its manifest when it is a
    factory artifact, otherwise the same formula over its files; None for a name (hub id,
    served model) whose content is not on this machine."""
    root = Path(model)
    if not root.is_dir():
        return None
    manifest = read_manifest(root)
    if manifest is not None:
        return manifest["hash"]
    # A plain checkpoint is hashed over its bytes: seconds to minutes for billions of
    # parameters. A run asks several times (planned identity, the engine's description,
    # the cache), so the hash is kept for as long as no file's size or mtime changes.
    stamp = (
        str(root.resolve()),
        tuple((rel, st.st_size, st.st_mtime_ns) for rel in hashing.list_files(root) for st in [(root / rel).stat()]),
    )
    if stamp not in _TREE_HASHES:
        _TREE_HASHES[stamp] = content_hash(hashing.hash_tree(root))
    return _TREE_HASHES[stamp]


_TREE_HASHES: dict[tuple, str] = {}


def stream_seed(seed: int, prompt: str, index: int) -> int:
    """A sampling seed for completion ``index`` of one prompt: independent of batching and of
    the order of requests, and different across prompts so their samples are not correlated."""
    digest = hashlib.sha256(f"{seed}\0{index}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def check_positive(engine: str, **values: Any) -> None:
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise FactoryError(f"engine {engine}: setting {key!r} must be a positive integer (got {value!r})")


def check_choice(engine: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise FactoryError(
            f"engine {engine}: setting {key!r} must be one of {', '.join(map(str, choices))} (got {value!r})"
        )


def empty_completion(n: int, reason: str = "length") -> Completion:
    return Completion(texts=[""] * n, tokens=[0] * n, finish_reasons=[reason] * n)
