"""A phone wallet (host card emulation) for nfcpy readers on the ``udp`` driver: ISO-DEP Type 4A target.

The phone answers APDUs with the same ``VirtualEmvCard`` as the vpcd card (``drivers/simulators/emv_card.py``),
so one profile reads the same through PC/SC and through nfcpy. The block protocol is in ``nfc_target.py``.

Bad-phone modes are the card's (``bad-tlv``, ``wrong-length``, ``error-sw``, ``drop``, ``t0``, ``no-ppse``);
``drop`` stops answering in the middle of the read (the phone pulled away). ``bad_taps=K`` misbehaves on the first
K taps only, so the next tap reads fine.

    run_phone(load_profile("phone"), 54321, taps=1)      # or: smartpos sim phone --profile phone --port 54321
    NfcpyReader("udp:127.0.0.1:54321").wait_for_card(...)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from drivers.simulators.emv_card import CardProfile, SimulatedDrop, VirtualEmvCard, load_profile
from drivers.simulators.nfc_target import EndTap, PortInUseError, TapOutcome, serve_isodep

__all__ = ["PortInUseError", "run_phone"]


def run_phone(
    profile: CardProfile | str | Path,
    udp_port: int,
    taps: int | None = None,
    stop: threading.Event | None = None,
    *,
    mode: str | None = None,
    bad_taps: int | None = None,
    gap: float = 0.0,
    on_tap: Callable[[int, TapOutcome], None] | None = None,
) -> int:
    """Serve ``profile`` as a phone on ``udp:127.0.0.1:udp_port`` for ``taps`` taps (``None``: until ``stop``).

    Blocks; prints nothing; returns the number of taps served. ``gap`` seconds out of the field between taps
    (0: the phone is presented again at once, as if left on the reader). Raises ``PortInUseError`` (an
    ``OSError``) when another process holds the port, ``ValueError`` for an unknown profile or mode.
    """
    prof = profile if isinstance(profile, CardProfile) else load_profile(profile)
    card = VirtualEmvCard(prof, mode=mode)

    def handler_for_tap(n: int) -> Callable[[bytes], bytes]:
        card.reset()  # a new activation is a new power-on for the card application
        card.mode = mode if bad_taps is None or n < bad_taps else None

        def process(apdu: bytes) -> bytes:
            try:
                return card.process(apdu)
            except SimulatedDrop as exc:
                raise EndTap from exc

        return process

    return serve_isodep(handler_for_tap, udp_port, uid=prof.uid, taps=taps, stop=stop, gap=gap, on_tap=on_tap)
