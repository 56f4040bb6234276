"""The terminal daemon: payment flow, local API, technician CLI, service lifecycle."""

from protocol import __version__

__all__ = ["__version__"]
