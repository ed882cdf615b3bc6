"""Tokenizing is flat in memory: 20x the documents does not raise peak RSS by more than a small bound."""

import json
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = """
import resource, sys
from pathlib import Path
from factory.corpus.tokenize import TokenizeSettings, tokenize_corpus

n, tok_dir, work = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
docs = (f"document {i} " + "lorem ipsum dolor sit amet " * 40 for i in range(n))
settings = TokenizeSettings(shard_tokens=2**20, heldout_tokens=4096, workers=1, progress=False)
made = tokenize_corpus(docs, tok_dir, work, settings)
print(made["tokens"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(n, tok_dir, work) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(tok_dir), str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    tokens, peak = map(int, out.stdout.split())
    return tokens, peak


def test_twenty_times_the_documents_keeps_peak_rss_flat(tmp_path, tok_dir):
    small_tokens, small = _peak_kib(200, tok_dir, tmp_path / "small")
    big_tokens, big = _peak_kib(4_000, tok_dir, tmp_path / "big")
    assert big_tokens > 19 * small_tokens > 4_000_000  # 20x: over 4M tokens against about 0.22M
    # a Python list of the big run's token ids alone would take over 30 MiB
    assert big - small < 24 * 1024, json.dumps({"small_kib": small, "big_kib": big})
