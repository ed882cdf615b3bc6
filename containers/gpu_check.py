"""GPU-side checks of the nemo engine inside the NGC image (see gpu-check.sh)."""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import tempfile
from pathlib import Path

import yaml

ALIGNER_DIR = Path(os.environ.get("ALIGNER_DIR", "/opt/NeMo-Aligner"))


def versions() -> None:
    import torch

    for name in ("nemo-toolkit", "nvidia-modelopt", "megatron-core", "nemo-aligner", "transformers", "torch"):
        try:
            print(f"{name:16} {md.version(name)}")
        except md.PackageNotFoundError:
            print(f"{name:16} not installed")
    print(f"{'cuda':16} {torch.version.cuda} ({torch.cuda.device_count()} GPUs)")


def aligner_overrides(spec_files: list[Path]) -> int:
    """Compose each Aligner job's overrides onto the image's own Hydra config."""
    from hydra import compose, initialize_config_dir

    failures = 0
    for path in spec_files:
        spec = yaml.safe_load(path.read_text())
        if spec.get("backend") != "aligner":
            continue
        overrides = [o.replace("$RUN_DIR", "/tmp/run") for o in spec["steps"]["train"][2:]]
        conf = ALIGNER_DIR / "examples/nlp/gpt/conf"
        try:
            with initialize_config_dir(config_dir=str(conf), version_base=None):
                cfg = compose(config_name=spec["aligner"]["config"].removesuffix(".yaml"), overrides=overrides)
            print(
                f"ok    {path}: {len(overrides)} overrides onto {spec['aligner']['config']}"
                f" (max_epochs {cfg.trainer.get(spec['kind'], {}).get('max_epochs')})"
            )
        except Exception as e:  # report every spec, then fail
            failures += 1
            print(f"FAIL  {path}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return failures


def tiny_llama(root: Path) -> Path:
    """A 4-layer Llama with a byte-level BPE tokenizer trained on a few lines."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=512, special_tokens=["<s>", "</s>"]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    out = root / "tiny-hf"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prune_round_trip(root: Path) -> float:
    """import -> llm.prune(drop_layers=[2, 3]) -> export; returns max |logit difference|."""
    import torch
    from nemo.collections import llm
    from nemo.collections.llm.modelopt.prune import PruningConfig
    from transformers import AutoModelForCausalLM

    hf = tiny_llama(root)
    nemo_ckpt = llm.import_ckpt(
        model=llm.LlamaModel(llm.Llama31Config8B()), source=f"hf://{hf}", output_path=root / "tiny-nemo"
    )
    llm.prune(
        nemo_checkpoint=str(nemo_ckpt),
        save_path=str(root / "tiny-pruned"),
        pruning_config=PruningConfig(drop_layers=[2, 3]),
        devices=1,
    )
    llm.export_ckpt(path=root / "tiny-pruned", target="hf", output_path=root / "tiny-pruned-hf")
    pruned = AutoModelForCausalLM.from_pretrained(root / "tiny-pruned-hf", torch_dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    assert pruned.config.num_hidden_layers == 2, pruned.config
    # NeMo counts layers from 1: dropping 2 and 3 keeps HF layers 0 and 3
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[0], ref.model.layers[3]])
    ref.config.num_hidden_layers = 2
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        diff = (pruned(ids).logits - ref(ids).logits).abs().max().item()
    return diff


def main(argv: list[str]) -> int:
    versions()
    failures = aligner_overrides([Path(a) for a in argv]) if ALIGNER_DIR.is_dir() else 0
    if not ALIGNER_DIR.is_dir():
        print(f"skip  Aligner configs: no {ALIGNER_DIR} in this image")
    with tempfile.TemporaryDirectory() as tmp:
        diff = prune_round_trip(Path(tmp))
    print(
        f"{'ok  ' if diff < 5e-2 else 'FAIL'}  tiny Llama import -> prune(drop_layers) -> export: max |logit diff| {diff:.2e}"
    )
    return 1 if failures or diff >= 5e-2 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
