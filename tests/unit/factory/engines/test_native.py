"""The native executor's work-dir housekeeping."""

from factory.engines.native import fresh_dirs


def _work(run_dir, name):
    d = run_dir / ".work" / name
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "state.pt").write_bytes(b"step 7")
    return d


def test_cleaning_one_stage_keeps_a_stage_whose_name_extends_it(tmp_path):
    """Stages `dpo` and `dpo-b`: running `dpo` used to delete `.work/dpo-b-*` (a glob on `dpo-*`)."""
    mine_old = _work(tmp_path, "dpo-" + "1" * 16)
    mine_now = _work(tmp_path, "dpo-" + "2" * 16)
    other = _work(tmp_path, "dpo-b-" + "3" * 16)
    also_other = _work(tmp_path, "dpo-" + "4" * 15)  # not a work key: 15 hex digits

    out = fresh_dirs(tmp_path, "dpo", mine_now)

    assert out == mine_now / "out" and out.is_dir() and list(out.iterdir()) == []
    assert not mine_old.exists()  # the same stage's dir for other inputs goes
    assert (mine_now / "checkpoint" / "state.pt").read_bytes() == b"step 7"  # resumable
    assert (other / "checkpoint" / "state.pt").read_bytes() == b"step 7"
    assert also_other.exists()


def test_a_rerun_empties_only_the_output_dir(tmp_path):
    work = _work(tmp_path, "sft-" + "a" * 16)
    (work / "out").mkdir()
    (work / "out" / "half-written.safetensors").write_bytes(b"x")
    out = fresh_dirs(tmp_path, "sft", work)
    assert list(out.iterdir()) == []
    assert (work / "checkpoint" / "state.pt").exists()
