"""Training-time reading of tokenized corpora: fixed-length blocks straight from
the shards' memory maps, in an order that is a pure function of the step, and
Megatron-style blends of several corpora.

Nothing here holds a corpus in memory: a block is read from ``numpy.memmap``
views when a batch asks for it, the shuffled order is computed per index by a
keyed bijection (no permutation array), and a blend keeps one counter per
corpus. Memory is O(number of shards + number of corpora), whatever the number
of tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from foundation.errors import FactoryError

_MASK64 = (1 << 64) - 1
_ROUNDS = 6


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a fast, well-spread 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class FeistelPermutation:
    """A seeded bijection of ``[0, n)`` computed one index at a time in O(1) memory.

    A balanced Feistel network over ``2k`` bits (``4**k >= n``, so the domain is
    under four times ``n``) permutes ``[0, 4**k)``; an index that lands at or past
    ``n`` is fed through again ("cycle walking") until it lands inside, which keeps
    the map a bijection of ``[0, n)`` and takes under four passes on average. The
    round function hashes (key, round, half) with SplitMix64, so each ``key`` gives
    an independent-looking permutation."""

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError("a permutation needs n >= 1")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        self.keys = [_mix64((key & _MASK64) ^ _mix64(r + 1)) for r in range(_ROUNDS)]

    def _round_trip(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix64(k ^ right) & self.mask)
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} outside [0, {self.n})")
        y = self._round_trip(i)
        while y >= self.n:
            y = self._round_trip(y)
        return y


class BlockSampler:
    """A corpus seen as consecutive ``seq_len``-token blocks over its shards, concatenated
    in order (documents back to back, each ending in the EOS the shards carry, as
    ``pack()`` builds them); the tail shorter than a block is not used.

    ``readers`` are IndexedReader-like objects (``.tokens``: a memmap of the shard's
    tokens, ``.total_tokens``). Sample position ``p`` is block
    ``perm_e(p mod n)`` of epoch ``e = p // n``, where ``perm_e`` is a
    :class:`FeistelPermutation` keyed by (seed, e): every epoch visits every block
    once, in its own order, and the order is a pure function of (position, seed,
    shard layout). Memory: one int64 per shard (the cumulative token offsets),
    nothing per block or per token."""

    def __init__(self, readers: Sequence, seq_len: int, seed: int):
        if seq_len < 1:
            raise ValueError("seq_len must be positive")
        self.readers = list(readers)
        self.seq_len = seq_len
        self.seed = seed
        sizes = [int(r.total_tokens) for r in self.readers]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.n_blocks = int(self.starts[-1]) // seq_len
        self._perms: dict[int, FeistelPermutation] = {}

    def __len__(self) -> int:
        return self.n_blocks

    @property
    def tokens(self) -> int:
        """Tokens in the whole blocks (what one epoch reads)."""
        return self.n_blocks * self.seq_len

    def block(self, i: int) -> np.ndarray:
        """Block ``i`` (in corpus order) as int64 ``[seq_len]``, read from the memmaps;
        a block that straddles two shards is joined from both."""
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"block {i} outside [0, {self.n_blocks})")
        lo, hi = i * self.seq_len, (i + 1) * self.seq_len
        s = int(np.searchsorted(self.starts, lo, side="right")) - 1
        parts = []
        while lo < hi:
            while int(self.starts[s + 1]) <= lo:  # skip empty shards
                s += 1
            off = lo - int(self.starts[s])
            take = min(hi, int(self.starts[s + 1])) - lo
            parts.append(np.asarray(self.readers[s].tokens[off : off + take], dtype=np.int64))
            lo += take
            s += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def index(self, position: int) -> int:
        """The block that sample ``position`` (0, 1, ... across epochs) reads."""
        if self.n_blocks == 0:
            raise FactoryError(f"the corpus holds fewer tokens than one block of {self.seq_len}")
        epoch, offset = divmod(position, self.n_blocks)
        perm = self._perms.get(epoch)
        if perm is None:
            self._perms = {epoch: FeistelPermutation(self.n_blocks, _mix64(self.seed) ^ epoch)}  # one epoch kept
            perm = self._perms[epoch]
        return perm(offset)

    def sample(self, position: int) -> np.ndarray:
        return self.block(self.index(position))

    def batch(self, step: int, micro: int, batch_size: int, grad_accum: int) -> torch.Tensor:
        """Micro-batch ``micro`` of optimizer step ``step`` as a LongTensor
        ``[batch_size, seq_len]``: a pure function of its arguments, the seed and
        the shard layout, so a resumed run reads exactly the blocks it would have."""
        first = (step * grad_accum + micro) * batch_size
        return torch.from_numpy(np.stack([self.sample(first + i) for i in range(batch_size)]))

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` blocks in corpus order (no shuffle), e.g. a held-out set."""
        return torch.from_numpy(np.stack([self.block(i) for i in range(count)]))


def check_weights(weights: Sequence[float], where: str) -> list[float]:
    """Blend weights as floats: at least one, each finite and positive (so they sum to a positive number)."""
    if not weights:
        raise FactoryError(f"{where}: a blend needs at least one corpus")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise FactoryError(f"{where}[{i}]: a blend weight must be a positive finite number, got {w!r}")
        out.append(float(w))
    return out


class BlendedSampler:
    """Samples from several :class:`BlockSampler` s in proportion to ``weights``, by
    Megatron-Core's blended-dataset rule: sample ``i`` comes from the corpus ``j``
    that maximises ``w_j * (i + 1) - n_j`` (``w`` normalised to sum to 1, ``n_j``
    the samples corpus ``j`` gave so far; ties go to the lower index), the greedy
    choice that keeps every corpus's realised share closest to its weight (after
    ``N`` samples each count is within one of ``w_j * N``). Corpus ``j``'s k-th
    sample is its sampler's position ``k``, so each corpus is read in its own
    shuffled order.

    The rule has no randomness (``seed`` is kept for the record: the corpora's own
    samplers carry the shuffling seeds). It is sequential, so the sampler keeps a
    cursor (position and one counter per corpus) and moves it forward as batches
    ask; a request behind the cursor (a resumed run) replays the choices from 0,
    which costs O(position x corpora) integer operations once and no memory."""

    def __init__(self, samplers: Sequence[BlockSampler], weights: Sequence[float], seed: int = 0):
        self.samplers = list(samplers)
        raw = check_weights(weights, "blend")
        if len(raw) != len(self.samplers):
            raise ValueError("one weight per sampler")
        lengths = {s.seq_len for s in self.samplers}
        if len(lengths) != 1:
            raise ValueError("blended samplers must share seq_len")
        self.seq_len = lengths.pop()
        total = sum(raw)
        self.weights = [w / total for w in raw]
        self.seed = seed
        self._pos, self._counts = 0, [0] * len(self.samplers)
        self._furthest = 0

    def _choose(self, position: int, counts: list[int]) -> int:
        best, best_err = 0, -math.inf
        for j, w in enumerate(self.weights):
            err = w * (position + 1) - counts[j]
            if err > best_err:
                best, best_err = j, err
        return best

    def _seek(self, position: int) -> None:
        if position < self._pos:
            self._pos, self._counts = 0, [0] * len(self.samplers)
        while self._pos < position:
            self._counts[self._choose(self._pos, self._counts)] += 1
            self._pos += 1

    def locate(self, position: int) -> tuple[int, int]:
        """(corpus, that corpus's sample position) for blended sample ``position``."""
        self._seek(position)
        j = self._choose(position, self._counts)
        return j, self._counts[j]

    def sample(self, position: int) -> np.ndarray:
        j, k = self.locate(position)
        self._furthest = max(self._furthest, position + 1)
        return self.samplers[j].sample(k)

    def batch(self, step: int, micro: int, batch_size: int, grad_accum: int) -> torch.Tensor:
        """As :meth:`BlockSampler.batch`: a pure function of its arguments and the layout."""
        first = (step * grad_accum + micro) * batch_size
        return torch.from_numpy(np.stack([self.sample(first + i) for i in range(batch_size)]))

    def realised(self, samples: int | None = None) -> list[int]:
        """Samples taken from each corpus among the first ``samples`` (default: up to
        the furthest sample read), e.g. ``steps * batch_size * grad_accum``."""
        self._seek(self._furthest if samples is None else samples)
        return list(self._counts)
