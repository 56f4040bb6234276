"""Write seed inputs for ``tlv_fuzz.py`` from the simulator's real answers (so the fuzzer starts deep in the flow).

Run:  .venv/bin/python fuzz/make_seeds.py fuzz/corpus
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.simulators.emv_card import VirtualEmvCard, profile_names


class _Recorder:
    def __init__(self, card: VirtualEmvCard) -> None:
        self.card = card
        self.answers: list[bytes] = []

    def transmit(self, apdu: bytes):
        from drivers.transport import split_response

        raw = self.card.process(apdu)
        self.answers.append(raw)
        return split_response(raw)


def flow_seed(answers: list[bytes]) -> bytes:
    """An input that makes the fuzz target's card give exactly ``answers``. atheris' FuzzedDataProvider (as
    libFuzzer's) takes bytes from the front and integers from the back: each answer's data and SW go in order at
    the front, its length (ConsumeIntInRange(0, 300): two bytes, the last one consumed first and the high one) in
    reverse order at the back."""
    front, back = bytearray(), bytearray()
    for raw in answers:
        data, sw = raw[:-2], raw[-2:]
        front += data + sw
        back[:0] = struct.pack(">H", len(data))[::-1]  # consumed from the end: [low, high] reads as high, low
    return b"\x01" + bytes(front + back)


def main(out: Path) -> None:
    from drivers import emv

    out.mkdir(parents=True, exist_ok=True)
    for name in profile_names():
        for mode in (None, "t0", "no-ppse"):
            rec = _Recorder(VirtualEmvCard(name, mode=mode))
            try:
                emv.read_card(rec, emv.TerminalData(), reader="seed")
            except Exception:  # the uid profile has no application: its answers are still good seeds
                pass
            (out / f"emv-{name}-{mode or 'plain'}").write_bytes(flow_seed(rec.answers))
            for i, raw in enumerate(rec.answers):
                (out / f"tlv-{name}-{mode or 'plain'}-{i}").write_bytes(b"\x00" + raw[:-2])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus"))
