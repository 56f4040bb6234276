"""What the terminal and head office agree on: amounts and currencies, card-data masking,
the transaction hash chain, sealed envelopes and request signatures.

One source of truth for each rule; both sides import from here, nothing is implemented twice.
"""

# The release of the whole distribution (terminal and head office ship together; setup.cfg reads it from here).
__version__ = "0.2.0"
