"""Shipped simulators: virtual EMV cards and phones for vpcd, nfcpy udp targets, NDEF tags, ESC/POS printer."""
