"""Recorded-transaction shapes as the offline queue returns them (field names of offline_queue.models.Transaction)."""

from __future__ import annotations

MERCHANT = {"id": "M-0042", "name": "Corner Coffee", "address": ["12 Main Street", "1000 Springfield"]}
NON_ASCII_MERCHANT = {"id": "M-0043", "name": "Caf\u00e9 Z\u00fcrich \u2013 \u5317\u4eac\u5e97 \u20ac",
                      "address": ["Bahnhofstrasse 1", "8001 Z\u00fcrich"]}
TEST_PAN = "4761739001010119"  # Visa test card (Luhn-valid)
EXPIRY = "2812"
TXN_UUID = "6f1c2f7e-9a41-4c59-8a43-0c2b7d9e1a55"


def sale(**over: object) -> dict:
    base = {
        "uuid": TXN_UUID,
        "sequence": 42,
        "batch": 3,
        "type": "sale",
        "created_at": "2026-11-23T12:34:56Z",
        "amount_minor": 1250,
        "currency": "EUR",
        "scheme": "visa",
        "masked_pan": TEST_PAN[:6] + "******" + TEST_PAN[-4:],
        "pan_last4": TEST_PAN[-4:],
        "aid": "A0000000031010",
        "label": "VISA CREDIT",
        "entry_mode": "contactless",
        "auth_mode": "online",
        "auth_code": "A1B2C3",
        "reference": "R-1001",
        "atc": "001C",
        "tvr": "0000008000",
        "void_of": None,
    }
    base.update(over)
    return base


def offline_sale() -> dict:
    return sale(uuid="0b9d7a4e-1f3c-4b8e-9c1a-2d3e4f5a6b7c", sequence=43, auth_mode="offline", auth_code=None,
                local_reference="OFF-T1-003-000043", amount_minor=990)


def refund() -> dict:
    return sale(uuid="a3c1e2d4-5b6f-4a7b-8c9d-0e1f2a3b4c5d", sequence=44, type="refund", amount_minor=500)


def void() -> dict:
    return sale(uuid="c0ffee00-1234-4abc-8def-001122334455", sequence=45, type="void", void_of=TXN_UUID,
                original_sequence=42)


def closed_batch() -> dict:
    return {
        "number": 3,
        "status": "closed",
        "opened_at": "2026-11-23T08:00:00Z",
        "closed_at": "2026-11-23T20:00:00Z",
        "hq_status": "balanced",
        "totals": {
            "count": 6,
            "by_scheme": [
                {"scheme": "visa", "currency": "EUR", "sale_count": 3, "sale_amount_minor": 3740, "refund_count": 1,
                 "refund_amount_minor": 500, "void_count": 1, "void_amount_minor": 1250, "net_amount_minor": 1990},
                {"scheme": "mastercard", "currency": "EUR", "sale_count": 1, "sale_amount_minor": 2000,
                 "refund_count": 0, "refund_amount_minor": 0, "void_count": 0, "void_amount_minor": 0,
                 "net_amount_minor": 2000},
            ],
        },
    }
