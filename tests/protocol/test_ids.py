"""Transaction ids: UUIDv7, unique, ordered by creation time."""

from __future__ import annotations

import time
import uuid

from protocol.ids import uuid7


def test_uuid7_is_a_version_7_rfc_uuid_carrying_its_millisecond():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # canonical lower-case 8-4-4-4-12
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_uuid7_sorts_by_time_and_never_repeats():
    earlier = [uuid7(1_700_000_000_000_000_000 + i * 1_000_000) for i in range(50)]
    assert earlier == sorted(earlier)
    many = {uuid7() for _ in range(20000)}
    assert len(many) == 20000
