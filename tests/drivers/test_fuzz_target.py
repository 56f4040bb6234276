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


def test_flow_seeds_replay_the_simulated_cards_whole_read(tmp_path):
    """A flow seed gives the fuzz target's card the simulator's real answers, so fuzzing starts from a complete
    read and mutates its depths. (The lengths used to sit at the front while the data provider takes integers
    from the back: every seed fell apart at the first answer.)"""
    import atheris

    from drivers import emv

    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_seeds.py"), str(corpus)], check=True, timeout=60)
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        import tlv_fuzz
    finally:
        sys.path.remove(str(ROOT / "fuzz"))
    for name, masked in (("visa", "476173******0010"), ("mastercard", "541333******0434")):
        for mode in ("plain", "t0", "no-ppse"):
            seed = (corpus / f"emv-{name}-{mode}").read_bytes()
            card = tlv_fuzz._FuzzCard(atheris.FuzzedDataProvider(seed[1:]))
            assert emv.read_card(card, tlv_fuzz._TD, reader="fuzz").masked_pan == masked, (name, mode)
