"""Training-time reading of tokenized shards: the keyed permutation, block reads
across shards, batches as a pure function of the step, and Megatron-style blends."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from factory.corpus import IndexedReader, IndexedWriter
from factory.corpus.blend import Blend
from factory.corpus.sampler import BlendedSampler, BlockSampler, FeistelPermutation, check_weights
from foundation.errors import ConfigError, FactoryError

ROOT = Path(__file__).resolve().parents[4]


def _shard(prefix: Path, docs: list[np.ndarray]) -> IndexedReader:
    w = IndexedWriter(prefix, np.uint16)
    for d in docs:
        w.add(d)
    w.finish()
    return IndexedReader(prefix)


def _corpus(tmp_path: Path, sizes: list[list[int]], start: int = 0) -> list[IndexedReader]:
    """Shards whose tokens count up from ``start`` (mod 60000), so every position is recognisable."""
    readers, t = [], start
    for s, docs in enumerate(sizes):
        out = []
        for n in docs:
            out.append((np.arange(t, t + n) % 60000).astype(np.uint16))
            t += n
        readers.append(_shard(tmp_path / f"train-{start}-{s:05d}", out))
    return readers


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 100, 257, 1000, 4099])
def test_feistel_is_a_bijection_and_a_pure_function(n):
    p = FeistelPermutation(n, key=7)
    image = [p(i) for i in range(n)]
    assert sorted(image) == list(range(n))
    assert image == [FeistelPermutation(n, key=7)(i) for i in range(n)]


def test_feistel_keys_give_different_orders_and_indices_are_checked():
    a = [FeistelPermutation(1000, 1)(i) for i in range(1000)]
    b = [FeistelPermutation(1000, 2)(i) for i in range(1000)]
    assert a != b and a != list(range(1000))
    with pytest.raises(IndexError):
        FeistelPermutation(10, 1)(10)


def test_blocks_are_the_concatenated_shards_cut_into_seq_len_pieces(tmp_path):
    readers = _corpus(tmp_path, [[50, 30], [], [7], [100, 13]])  # an empty shard; blocks straddle shards
    s = BlockSampler(readers, seq_len=16, seed=0)
    assert len(s) == 200 // 16
    stream = np.arange(200)
    for i in range(len(s)):
        assert s.block(i).dtype == np.int64
        assert np.array_equal(s.block(i), stream[i * 16 : (i + 1) * 16])
    with pytest.raises(IndexError):
        s.block(len(s))


def test_each_epoch_visits_every_block_once_in_its_own_order(tmp_path):
    s = BlockSampler(_corpus(tmp_path, [[64 * 37]]), seq_len=64, seed=3)
    first = [s.index(p) for p in range(37)]
    second = [s.index(p) for p in range(37, 74)]
    assert sorted(first) == sorted(second) == list(range(37))
    assert first != second


def test_batches_are_a_pure_function_of_step_and_survive_a_simulated_resume(tmp_path):
    readers = _corpus(tmp_path, [[300, 200], [524]])
    run = BlockSampler(readers, seq_len=32, seed=5)
    whole = [run.batch(step, micro, 3, 2) for step in range(12) for micro in range(2)]
    resumed = BlockSampler([IndexedReader(r.prefix) for r in readers], 32, 5)  # a fresh process's view
    tail = [resumed.batch(step, micro, 3, 2) for step in range(7, 12) for micro in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(whole[14:], tail))
    assert whole[0].shape == (3, 32) and whole[0].dtype == torch.int64
    other = BlockSampler(readers, 32, 6)
    assert not all(torch.equal(a, other.batch(s, m, 3, 2)) for (s, m), a in zip(((0, 0), (0, 1)), whole[:2]))


def test_a_corpus_smaller_than_one_block_is_refused(tmp_path):
    s = BlockSampler(_corpus(tmp_path, [[10]]), seq_len=64, seed=0)
    assert len(s) == 0
    with pytest.raises(FactoryError, match="fewer tokens than one block"):
        s.index(0)


def _blend(tmp_path, weights, seed=0):
    for j in range(len(weights)):
        (tmp_path / f"c{j}").mkdir(exist_ok=True)
    samplers = [
        BlockSampler(_corpus(tmp_path / f"c{j}", [[16 * (40 + j)]], start=10000 * j), 16, seed + j)
        for j in range(len(weights))
    ]
    return BlendedSampler(samplers, weights, seed)


@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1, 2], [0.05, 0.9, 0.05], [3.0]])
def test_blends_realise_their_weights_over_10k_samples(tmp_path, weights):
    b = _blend(tmp_path, weights)
    n = 10_000
    counts = b.realised(n)
    assert sum(counts) == n
    total = sum(weights)
    for c, w in zip(counts, weights):
        assert abs(c - n * w / total) <= 2, (counts, weights)  # the greedy rule stays within a sample or two
        assert abs(c / n - w / total) <= 0.001


def test_blends_are_exactly_reproducible_and_survive_a_simulated_resume(tmp_path):
    a = _blend(tmp_path, [0.5, 0.3, 0.2], seed=1)
    whole = [a.batch(step, 0, 4, 1) for step in range(30)]
    fresh = [BlockSampler([IndexedReader(r.prefix) for r in s.readers], s.seq_len, s.seed) for s in a.samplers]
    b = BlendedSampler(fresh, [0.5, 0.3, 0.2], seed=1)  # a fresh process's view of the same shards
    assert all(torch.equal(x, b.batch(step, 0, 4, 1)) for step, x in zip(range(20, 30), whole[20:]))
    assert all(torch.equal(x, b.batch(step, 0, 4, 1)) for step, x in enumerate(whole))  # back to the start
    assert a.realised() == b.realised() == a.realised(120)
    # every sample is a block of the corpus the rule chose, at that corpus's next position
    rows = torch.cat(whole)
    for p in range(len(rows)):
        j, k = a.locate(p)
        assert int(rows[p, 0]) // 10000 == j
        assert torch.equal(rows[p], torch.from_numpy(a.samplers[j].sample(k)))


def test_blend_weights_must_be_positive_and_finite():
    with pytest.raises(FactoryError, match="at least one corpus"):
        check_weights([], "blend")
    for bad in ([0.0], [-1.0, 2.0], [float("nan")], [float("inf")], [True]):
        with pytest.raises(FactoryError, match="positive finite"):
            check_weights(bad, "blend")
    assert check_weights([1, 0.5], "blend") == [1.0, 0.5]


@pytest.mark.parametrize(
    "blend, message",
    [
        ([], "at least one"),
        ([[0, "web"], [0, "code"]], "blend\\[0\\]: weight 0 must be a positive finite number"),
        ([[0.5, "web"], [-0.5, "code"]], "blend\\[1\\]: weight -0.5 must be a positive finite number"),
        ([[0.5]], "expected \\[weight, corpus name\\]"),
        ([[0.5, "web"], [0.5, "web"]], "listed twice"),
    ],
)
def test_blend_config_is_checked_in_one_line(blend, message):
    with pytest.raises(ConfigError, match=message) as e:
        Blend(blend=blend).validate("stages.correct.data")
    assert "\n" not in str(e.value)


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from factory.corpus import IndexedReader
    from factory.corpus.sampler import BlockSampler

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    root = Path(sys.argv[1])
    readers = [IndexedReader(p.with_suffix("")) for p in sorted(root.glob("*.idx"))]
    s = BlockSampler(readers, seq_len=128, seed=0)
    s.batch(0, 0, 8, 1)
    peak_anon = anon_kb()
    for step in range(25):
        s.batch(step, 0, 8, 1)
        peak_anon = max(peak_anon, anon_kb())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"blocks": len(s), "peak_kb": peak, "peak_anon_kb": peak_anon}))
    """
)


def _write_tokens(root: Path, tokens: int, shard_tokens: int = 1 << 20) -> None:
    root.mkdir()
    rng = np.random.default_rng(0)
    done = 0
    for s in range(0, tokens, shard_tokens):
        w = IndexedWriter(root / f"train-{s // shard_tokens:05d}", np.uint16)
        for _ in range(min(shard_tokens, tokens - s) // 1024):
            w.add(rng.integers(0, 50000, 1024, dtype=np.uint16))
            done += 1024
        w.finish()


def _peak_rss(root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(root)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_peak_rss_of_reading_does_not_grow_with_the_corpus(tmp_path):
    """1M and 20M tokens (2 MB and 40 MB of shards; 160 MB as an int64 tensor): the
    same 200 blocks read from each. Peak RSS (ru_maxrss) counts the shard pages a
    read maps (the kernel maps up to 64 KB around each fault), which depends on the
    blocks read, not on the corpus: within 16 MB; anonymous memory within 8 MB."""
    _write_tokens(tmp_path / "small", 1 << 20)
    _write_tokens(tmp_path / "large", 20 << 20)
    small, large = _peak_rss(tmp_path / "small"), _peak_rss(tmp_path / "large")
    assert large["blocks"] == 20 * small["blocks"]
    assert large["peak_kb"] - small["peak_kb"] < 16 * 1024, (small, large)
    assert large["peak_anon_kb"] - small["peak_anon_kb"] < 8 * 1024, (small, large)
