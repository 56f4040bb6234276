"""What the terminal and head office agree on: amounts and currencies, card-data masking,
the transaction hash chain, sealed envelopes and request signatures.

One source of truth for each rule; both sides import from here, nothing is implemented twice.
"""
