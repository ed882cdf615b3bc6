"""Small file steps of nemo engine jobs (copied into the job dir as job_tools.py).

python job_tools.py find-nemo LOG_DIR OUT.nemo      # NeMo-Aligner's final .nemo -> a fixed path
python job_tools.py carry-tokenizer SRC_HF DST_HF   # tokenizer, chat template, generation config,
                                                    # and config fields the export left null"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


def carry_tokenizer(src: Path, dst: Path) -> list[str]:
    """Every stage keeps its input's tokenizer: copy what the export did not write."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


# config.json fields an export may write as null although the model has a value. NeMo's Mistral
# importer takes the sequence length from sliding_window, which Mistral-NeMo leaves null, so every
# export of such a model says max_position_embeddings: null; the input's value is the model's own.
REQUIRED_CONFIG_FIELDS = ("max_position_embeddings",)


def repair_config(src: Path, dst: Path) -> list[str]:
    """Fill the :data:`REQUIRED_CONFIG_FIELDS` that ``dst/config.json`` has as null from ``src``'s."""
    src_cfg, dst_path = src / "config.json", dst / "config.json"
    if not (src_cfg.is_file() and dst_path.is_file()):
        return []
    have, want = json.loads(dst_path.read_text()), json.loads(src_cfg.read_text())
    fixed = [k for k in REQUIRED_CONFIG_FIELDS if have.get(k) is None and want.get(k) is not None]
    if fixed:
        have.update({k: want[k] for k in fixed})
        tmp = dst_path.with_name(".config.json.tmp")
        tmp.write_text(json.dumps(have, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, dst_path)
    return fixed


def carry_over(src: Path, dst: Path) -> list[str]:
    """What every export step does after the converter: tokenizer files and null config fields."""
    return carry_tokenizer(src, dst) + [f"config.json:{k}" for k in repair_config(src, dst)]


def find_nemo(log_dir: Path, out: Path) -> Path:
    """The newest .nemo under ``log_dir`` (Aligner saves it at the end of training), linked to ``out``."""
    found = sorted(log_dir.rglob("*.nemo"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no .nemo file under {log_dir}: did training reach its end?")
    if out.exists() or out.is_symlink():
        out.unlink()
    os.symlink(found[-1], out)
    return found[-1]


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in ("find-nemo", "carry-tokenizer"):
        sys.exit("usage: job_tools.py find-nemo LOG_DIR OUT | carry-tokenizer SRC DST")
    if argv[0] == "find-nemo":
        print(find_nemo(Path(argv[1]), Path(argv[2])))
    else:
        print(" ".join(carry_over(Path(argv[1]), Path(argv[2]))) or "nothing to copy")


if __name__ == "__main__":
    main(sys.argv[1:])
