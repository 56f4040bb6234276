"""The terminal daemon: payment flow, local API, technician CLI, service lifecycle."""

__version__ = "0.1.0"
