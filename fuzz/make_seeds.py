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
            # FuzzedDataProvider.ConsumeIntInRange(0, 300) reads 2 bytes (big end first per byte order).
            blob = bytearray(b"\x01")
            for raw in rec.answers:
                data, sw = raw[:-2], raw[-2:]
                blob += struct.pack("<H", len(data)) + data + sw
            (out / f"emv-{name}-{mode or 'plain'}").write_bytes(bytes(blob))
            for i, raw in enumerate(rec.answers):
                (out / f"tlv-{name}-{mode or 'plain'}-{i}").write_bytes(b"\x00" + raw[:-2])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus"))
