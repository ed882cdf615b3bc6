"""The checks of the nemo engine that need the NGC image and a GPU (see gpu-check.sh).

First the image's NVIDIA versions against the pins (containers/nemo_stack.py), then one
``ok`` / ``FAIL`` / ``skip`` line per stage kind: every NVIDIA script a given job spec calls
answers ``--help`` (so it imports and its argument parser builds), the NeMo-Aligner overrides
compose onto the image's own Hydra configs, and a tiny Llama goes HF -> NeMo -> prune -> HF.
Exit status 1 if any line says FAIL."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nemo_stack  # noqa: E402  (a sibling file: containers/ is not a package)

ALIGNER_DIR = Path(os.environ.get("ALIGNER_DIR", "/opt/NeMo-Aligner"))
NEMO_DIR = Path(os.environ.get("NEMO_DIR", "/opt/NeMo"))
# Stage kinds with a job, by the image they run in.
KINDS = {"nemo": ("correct", "prune", "distill"), "aligner": ("sft", "dpo")}
HELP_TIMEOUT_S = 300


@dataclass
class StageResult:
    """What was checked for one stage kind: a phrase per check, and the failures among them."""

    kind: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.failed:
            return f"FAIL  {self.kind:8} " + "; ".join(self.failed)
        if self.passed:
            return f"ok    {self.kind:8} " + "; ".join(self.passed)
        return f"skip  {self.kind:8} nothing checked (give its job spec: runs/*/.nemo/*/config.yaml)"


def image_kind() -> str:
    """Which image this is: the Dockerfile records it; else an image with NeMo-Aligner is the aligner one."""
    return os.environ.get("FACTORY_NEMO_STACK") or ("aligner" if ALIGNER_DIR.is_dir() else "nemo")


def versions(kind: str) -> bool:
    """Print the stack and its verdict against the pins; True when it matches."""
    nemo_stack.main(["show", kind])
    try:
        import torch  # optional: absent only outside an image

        print(f"{'cuda':20} {torch.version.cuda} ({torch.cuda.device_count()} GPUs)")
    except ImportError:
        print(f"{'cuda':20} no torch")
    found, sources = nemo_stack.survey(kind)
    line = nemo_stack.verdict(kind, found, sources)
    print(line)
    return line.startswith("ok")


def nvidia_scripts(spec: dict, nemo_dir: Path, aligner_dir: Path) -> list[Path]:
    """The NeMo / NeMo-Aligner scripts a job spec's steps run, resolved to this image's paths."""
    roots = {"$NEMO_DIR": str(nemo_dir), "$ALIGNER_DIR": str(aligner_dir)}
    steps = spec.get("steps", {})
    commands = [*steps.get("prepare", []), steps.get("train", []), *steps.get("finish", [])]
    out = []
    for command in commands:
        for word in command:
            root = next((r for r in roots if word.startswith(r + "/")), None)
            if root and word.endswith(".py"):
                path = Path(word.replace(root, roots[root], 1))
                if path not in out:
                    out.append(path)
    return out


def script_answers(script: Path, python: str = sys.executable) -> str | None:
    """None when ``python script --help`` exits 0; else why not, in one phrase."""
    if not script.is_file():
        return f"{script} missing"
    try:
        done = subprocess.run(
            [python, str(script), "--help"], capture_output=True, text=True, timeout=HELP_TIMEOUT_S, cwd=script.parent
        )
    except subprocess.TimeoutExpired:
        return f"{script.name} --help: no answer in {HELP_TIMEOUT_S} s"
    if done.returncode == 0:
        return None
    last = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
    return f"{script.name} --help: exit {done.returncode}: {last[-1].strip() if last else 'no output'}"


def check_scripts(specs: list[tuple[Path, dict]], results: dict[str, StageResult], nemo_dir: Path, aligner_dir: Path):
    """Every NVIDIA script of every given spec answers --help (checked once, reported per kind)."""
    seen: dict[Path, str | None] = {}
    for _path, spec in specs:
        result = results.get(spec.get("kind"))
        if result is None:
            continue
        scripts = nvidia_scripts(spec, nemo_dir, aligner_dir)
        for script in scripts:
            if script not in seen:
                seen[script] = script_answers(script)
            if seen[script] and seen[script] not in result.failed:
                result.failed.append(seen[script])
        for script in scripts:
            phrase = f"{script.name} --help ok"
            if seen[script] is None and phrase not in result.passed:
                result.passed.append(phrase)


def aligner_overrides(specs: list[tuple[Path, dict]], results: dict[str, StageResult]) -> None:
    """Compose each Aligner job's overrides onto the image's own Hydra config."""
    from hydra import compose, initialize_config_dir  # optional: only the aligner image has Hydra configs

    conf = ALIGNER_DIR / "examples/nlp/gpt/conf"
    for path, spec in specs:
        if spec.get("backend") != "aligner" or spec.get("kind") not in results:
            continue
        result = results[spec["kind"]]
        overrides = [o.replace("$RUN_DIR", "/tmp/run") for o in spec["steps"]["train"][2:]]
        try:
            with initialize_config_dir(config_dir=str(conf), version_base=None):
                compose(config_name=spec["aligner"]["config"].removesuffix(".yaml"), overrides=overrides)
            result.passed.append(f"{len(overrides)} overrides compose onto {spec['aligner']['config']}")
        except Exception as e:  # report every spec, then fail
            result.failed.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0]}")


def tiny_llama(root: Path) -> Path:
    """A 4-layer Llama with a byte-level BPE tokenizer trained on a few lines."""
    import torch  # optional: the NGC image's
    from tokenizers import ByteLevelBPETokenizer  # optional: the NGC image's
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # optional: the NGC image's

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
    import torch  # optional: the NGC image's
    from nemo.collections import llm  # optional: only the NGC image has NeMo
    from nemo.collections.llm.modelopt.prune import PruningConfig  # optional: only the NGC image has NeMo
    from transformers import AutoModelForCausalLM  # optional: the NGC image's

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


def check_prune(result: StageResult) -> None:
    """The tiny round trip, reported on the prune line (it also exercises every job's import and export)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            diff = prune_round_trip(Path(tmp))
    except Exception as e:  # one line on the report, not a traceback
        result.failed.append(f"tiny Llama import -> prune -> export: {type(e).__name__}: {str(e).splitlines()[0]}")
        return
    phrase = f"tiny Llama import -> prune(drop_layers) -> export, max |logit diff| {diff:.2e}"
    (result.passed if diff < 5e-2 else result.failed).append(phrase)


def run_checks(kind: str, specs: list[tuple[Path, dict]], tiny: bool = True) -> list[StageResult]:
    """Every check this image can run, grouped by stage kind; kinds of the other image are skipped."""
    results = {k: StageResult(k) for k in KINDS[kind]}
    check_scripts(specs, results, NEMO_DIR, ALIGNER_DIR)
    if kind == "aligner" and ALIGNER_DIR.is_dir():
        aligner_overrides(specs, results)
    if kind == "nemo" and tiny:
        check_prune(results["prune"])
    return list(results.values())


def main(argv: list[str]) -> int:
    kind = image_kind()
    print(f"image: {kind} (stage kinds {', '.join(KINDS[kind])})")
    stack_ok = versions(kind)
    specs = [(Path(a), yaml.safe_load(Path(a).read_text())) for a in argv]
    results = run_checks(kind, specs, tiny=os.environ.get("GPU_CHECK_TINY", "1") != "0")
    for result in results:
        print(result.line())
    other = next(k for k in KINDS if k != kind)
    for spec_path, spec in specs:
        if spec.get("kind") in KINDS[other]:
            print(f"skip  {spec['kind']:8} {spec_path}: runs in the {other} image")
    return 0 if stack_ok and not any(r.failed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
