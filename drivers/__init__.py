"""Hardware boundaries: PC/SC and nfcpy card readers, ESC/POS printers, serial peripherals, simulators.

Each boundary is one narrow method (a card transport is ``transmit(apdu) -> RApdu``, a printer sink is
``write(bytes)`` + ``status()``); everything above it is shared and never knows which stack it runs on.
"""
