"""The atheris fuzz target stays runnable (a short run here; the long run's result is in the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("atheris")


def test_fuzz_target_runs_clean_on_seeds(tmp_path):
    corpus = tmp_path / "corpus"
    seeds = subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_seeds.py"), str(corpus)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert seeds.returncode == 0, seeds.stderr
    assert len(list(corpus.iterdir())) >= 12
    out = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "tlv_fuzz.py"), "-runs=3000", "-seed=1", str(corpus)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Done 3000 runs" in out.stderr
