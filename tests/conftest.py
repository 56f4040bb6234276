"""Shared fixtures. Each area adds its fixtures in a module under tests/harness/ and lists it here."""

pytest_plugins = [
    "tests.harness.procs",
    "tests.harness.pcsc",
    "tests.harness.printer",
    "tests.harness.daemon",
    "tests.harness.headoffice",
    "tests.harness.queue",
    "tests.harness.nfc",
]
