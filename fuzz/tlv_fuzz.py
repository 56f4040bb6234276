"""atheris fuzz target: the BER-TLV parser and the EMV read flow on card answers chosen by the fuzzer.

Run:  .venv/bin/python fuzz/tlv_fuzz.py -max_total_time=300 [-seed_corpus...] [CORPUS_DIR]
Any exception other than ``CardError`` (or a hang / crash) is a finding.

The first input byte picks the target: even -> ``tlv.parse`` + ``tlv.parse_dol`` on the rest; odd -> a full
``emv.read_card`` where every card answer (data + SW) is cut from the remaining input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from drivers import emv, tlv
    from drivers.errors import CardError
    from drivers.transport import split_response


class _FuzzCard:
    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        self.fdp = fdp
        self.calls = 0

    def transmit(self, apdu: bytes):
        self.calls += 1
        if self.calls > 200:
            # A real card cannot keep the reader busy forever either; the flow must end well before this.
            raise AssertionError("EMV flow sent more than 200 APDUs")
        n = self.fdp.ConsumeIntInRange(0, 300)
        return split_response(self.fdp.ConsumeBytes(n) + self.fdp.ConsumeBytes(2))


_TD = emv.TerminalData(amount_minor=1250)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        body = data[1:]
        try:
            tlv.parse(body)
        except CardError:
            pass
        try:
            tlv.parse_dol(body[:252])
        except CardError:
            pass
        return
    fdp = atheris.FuzzedDataProvider(data[1:])
    try:
        emv.read_card(_FuzzCard(fdp), _TD, reader="fuzz")
    except CardError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
