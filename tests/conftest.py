"""Shared fixtures. Each area adds its fixtures in a module under tests/harness/ and lists it here."""

pytest_plugins = [
    "tests.harness.procs",
]
