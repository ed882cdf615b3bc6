def test_a_model_built_twice_at_once_keeps_the_first_copy(tmp_path, monkeypatch):
    """Two processes (ranks, parallel runs) build the same cached model: the one that
    publishes second must neither delete the first copy (a reader may be loading it) nor fail."""
    import factory.sources.models as models
    from factory.sources.tiny import TinyLlamaSpec

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    spec = models.ModelSpec(tiny=TinyLlamaSpec(num_hidden_layers=1, hidden_size=32, intermediate_size=64))
    real_build = models.build_tiny
    calls = []

    def rival_publishes_first(tiny, out):
        calls.append(out)
        real_build(tiny, out)
        if len(calls) == 1:  # the rival: same key, finished while we were building
            rival = models.materialize(spec, tmp_path)
            (rival / "being-read").write_text("x")

    monkeypatch.setattr(models, "build_tiny", rival_publishes_first)
    got = models.materialize(spec, tmp_path)
    assert (got / "being-read").exists() and (got / ".complete").exists()
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # no build dir left behind

    # a partial leftover (no .complete) is replaced
    (got / ".complete").unlink()
    monkeypatch.setattr(models, "build_tiny", real_build)
    again = models.materialize(spec, tmp_path)
    assert again == got and (again / ".complete").exists() and not (again / "being-read").exists()
