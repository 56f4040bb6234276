"""Optional Prometheus metrics: payments by outcome, queue depth, sync lag, printer and reader state.

A private registry (nothing global), served on its own loopback port when ``[metrics] port`` is set. Gauges are
refreshed from the daemon's status at scrape time, so nothing polls in the background.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.registry import Collector

PRINTER_STATES = ("ok", "paper_low", "paper_out", "offline", "unknown")


class Metrics:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.payments = Counter(
            "smartpos_payments", "Payments by final state, type and authorization method",
            ["state", "type", "method"], registry=self.registry,
        )
        self.approval_seconds = Histogram(
            "smartpos_card_to_approval_seconds", "Card detected to approved-and-durable",
            buckets=(0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 3, 5, 10), registry=self.registry,
        )
        self.registry.register(_StatusCollector(status))
        self._server: Any = None

    def payment_finished(self, payment: dict[str, Any], card_to_approval_s: float | None = None) -> None:
        auth = payment.get("authorization") or {}
        method = auth.get("method") or auth.get("mode") or "none"
        self.payments.labels(payment.get("state", "unknown"), payment.get("type", "sale"), method).inc()
        if card_to_approval_s is not None:
            self.approval_seconds.observe(card_to_approval_s)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        try:
            status = self._status()
        except Exception:
            return
        queue = status.get("queue") or {}
        depth = GaugeMetricFamily("smartpos_queue_unsynced", "Transactions not yet accepted by head office")
        depth.add_metric([], float(queue.get("unsynced_count") or 0))
        yield depth
        lag = GaugeMetricFamily("smartpos_sync_lag_seconds", "Age of the oldest unsynced transaction")
        lag.add_metric([], float(queue.get("oldest_unsynced_age_s") or 0))
        yield lag
        online = GaugeMetricFamily("smartpos_headoffice_online", "1 when the last head-office contact succeeded")
        online.add_metric([], 1.0 if (status.get("headoffice") or {}).get("online") else 0.0)
        yield online
        printer = GaugeMetricFamily("smartpos_printer_state", "Printer state (1 for the current one)", labels=["state"])
        current = (status.get("printer") or {}).get("state", "unknown")
        for state in PRINTER_STATES:
            printer.add_metric([state], 1.0 if state == current else 0.0)
        yield printer
        readers = GaugeMetricFamily("smartpos_readers_ready", "Readers in state ready or card_present")
        readers.add_metric([], float(sum(1 for r in status.get("readers") or [] if r.get("state") in
                                         ("ready", "card_present"))))
        yield readers


__all__ = ["Metrics"]
