"""The daemon's composition root: config -> enrollment -> queue -> readers -> printer spooler -> sync -> local API.

Everything is wired here and only here, so tests and the demo build the same objects. Lifecycle:
``start()`` builds and recovers (in-flight payments resolved before the API opens), ``serve()`` runs the local API
until SIGTERM/SIGINT; then the payment in progress finishes its step, the workers stop, and ``run()`` returns 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from config.settings import Settings
from terminal import __version__
from terminal.events import PaymentEvents
from terminal.payment import State, is_final
from terminal.service import Notifier, Watchdog

log = logging.getLogger("smartpos.daemon")

API_FILE = "api.json"
LOCK_FILE = "daemon.lock"
# A payment step with no heartbeat for this long beyond its own bounds (card wait, online authorization and a
# reversal) means the worker is stuck in a call that never returns: the watchdog stops pinging, systemd restarts.
STALL_MARGIN_S = 60.0


class StartupError(Exception):
    """The daemon cannot start; the message is one line for the technician."""


NO_READER = "no card reader configured: set readers.pcsc = true or list readers.nfcpy paths"


def startup_problems(settings: Settings) -> list[str]:
    """What would stop the daemon from starting with ``settings`` that can be told without opening a device
    (`run --check`, `selftest`)."""
    from protocol.errors import ValidationError
    from terminal.receipts import configured_profile

    problems = []
    if settings.printer.uri:
        try:
            configured_profile(settings)
        except ValidationError as exc:
            problems.append(f"printer: {exc.message}")
    if not settings.readers.pcsc and not settings.readers.nfcpy:
        problems.append(NO_READER)
    return problems


class Daemon:
    def __init__(self, settings: Settings, *, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.events = PaymentEvents()
        self.started_at = time.monotonic()
        self._stopping = threading.Event()
        self._closed = False
        self.loop_heartbeat = time.monotonic()
        self._server: Any = None
        self.api_url: str | None = None
        # built by start()
        self.enrollment: Any = None
        self.store: Any = None
        self.ledger: Any = None
        self.reader: Any = None
        self.spooler: Any = None
        self.hq: Any = None
        self.sync: Any = None
        self.flow: Any = None
        self.metrics: Any = None
        self._watchdog = Watchdog(self.notifier, self.health_problem)
        self._sync_thread: threading.Thread | None = None
        self._stop_sync = threading.Event()
        self._lock_fd: int | None = None
        s = settings
        self._stall_limit_s = (s.payments.card_timeout_s + 2 * s.payments.online_timeout_s
                               + 2 * s.headoffice.timeout_s + STALL_MARGIN_S)

    # ----- building ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        from config.provisioning import ProvisioningError, load_enrollment

        state_dir = Path(self.settings.state_dir)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"state dir {state_dir}: {exc.strerror}") from None
        self._lock_state_dir(state_dir)
        try:
            self.enrollment = load_enrollment(state_dir)
        except ProvisioningError as exc:
            raise StartupError(str(exc)) from None
        if self.settings.terminal.id and self.settings.terminal.id != self.enrollment.terminal_id:
            raise StartupError(
                f"config terminal.id {self.settings.terminal.id!r} differs from the enrollment's "
                f"{self.enrollment.terminal_id!r}; fix the config or re-enroll"
            )
        self.ledger = self._build_ledger()
        self.reader = self._build_reader()
        self.spooler = self._build_spooler()
        self._build_sync()
        self.flow = self._build_flow()
        recovered = self.flow.recover()
        if recovered:
            log.warning("daemon.recovered", extra={"payments": len(recovered)})
        if self.settings.metrics.port is not None:
            from terminal.metrics import Metrics

            self.metrics = Metrics(self.status)
            try:
                port = self.metrics.serve(self.settings.metrics.host, self.settings.metrics.port)
            except OSError as exc:
                raise StartupError(f"metrics: cannot listen on {self.settings.metrics.host}:"
                                   f"{self.settings.metrics.port} ({exc.strerror})") from None
            log.info("metrics.listening", extra={"port": port})
        self.flow.start()
        if self.sync is not None:
            self._sync_thread = threading.Thread(target=self._run_sync, name="sync", daemon=True)
            self._sync_thread.start()

    @staticmethod
    def running_pid(state_dir: Path) -> str | None:
        """The pid of the daemon that holds ``state_dir`` (its ``daemon.lock``), or None when none runs.
        ``PermissionError`` when this user may not look (the service's state dir is 0700): nothing can be told."""
        import fcntl

        try:
            fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except PermissionError:
            raise
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _lock_state_dir(self, state_dir: Path) -> None:
        """One daemon per state dir. A second one (a technician's `smartpos run` beside the service) would resolve
        the first one's payment in progress as interrupted at its recovery, then run a second worker on the same
        readers and queue; it stops here instead, before it touches anything."""
        import fcntl

        path = state_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StartupError(f"state dir {state_dir}: cannot open {LOCK_FILE}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(f"another smartpos daemon (pid {holder}) is running on state dir {state_dir}; "
                               "stop it first (systemctl stop smartpos)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _build_ledger(self) -> Any:
        from terminal.ledger import LedgerError, QueueLedger

        try:
            return QueueLedger.open(self.settings, self.enrollment)
        except LedgerError as exc:
            raise StartupError(str(exc)) from None

    def _build_reader(self) -> Any:
        readers: list[Any] = []
        if self.settings.readers.pcsc:
            from drivers.pcsc import PcscReaders

            readers.append(PcscReaders(self.settings.readers.pcsc_filter).start())
        for path in self.settings.readers.nfcpy:
            from drivers.errors import CardError
            from drivers.nfc_reader import NfcpyReader

            try:
                readers.append(NfcpyReader(path).start())
            except (ValueError, CardError) as exc:
                raise StartupError(f"readers.nfcpy: {exc}") from None
        if not readers:
            raise StartupError(NO_READER)
        if len(readers) == 1:
            return readers[0]
        from drivers.readers import MultiReader

        return MultiReader(readers)

    def _build_spooler(self) -> Any:
        from protocol.errors import ValidationError
        from terminal.receipts import ReceiptDesk

        try:
            return ReceiptDesk.build(self.settings, self.enrollment, self.ledger)
        except ValidationError as exc:  # a bad printer URI or profile
            raise StartupError(f"printer: {exc.message}") from None

    def _build_sync(self) -> None:
        url = self.settings.headoffice.url or self.enrollment.hq_url
        if not url:
            return
        from terminal.hqlink import HeadOfficeLink

        self.hq = HeadOfficeLink.build(self.settings, self.enrollment, self.ledger, url)
        self.sync = self.hq.sync

    def _build_flow(self) -> Any:
        from terminal.flow import FlowSettings, PaymentFlow

        return PaymentFlow(
            self.ledger,
            self.reader,
            online=self.hq.authorize if self.hq is not None else None,
            receipts=self.spooler,
            publish=self.events.publish,
            settings=FlowSettings(
                default_mode=self.settings.payments.mode,
                card_timeout_s=self.settings.payments.card_timeout_s,
                terminal_data=self._terminal_data,
                closed_loop_uid=self.settings.payments.closed_loop_uid,
                currency=self.settings.payments.currency,
            ),
            on_outcome=self._payment_finished,
            reversals=self.hq,
        )

    def _terminal_data(self, payment: dict[str, Any]) -> Any:
        return terminal_data(self.settings, self.enrollment, payment)

    def _payment_finished(self, payment: dict[str, Any]) -> None:
        if self.metrics is not None:
            timings = self.flow.timings(payment["id"]) if self.flow is not None else None
            elapsed = None
            if timings and "approved" in timings:
                elapsed = timings["approved"] - timings["card_detected"]
            self.metrics.payment_finished(payment, elapsed)
        if payment.get("state") == State.APPROVED and self.hq is not None:
            self.hq.wake()

    def _run_sync(self) -> None:
        assert self.hq is not None
        self.hq.run(self._stop_sync)

    # ----- what the API asks ---------------------------------------------------------------------------------------
    def event_view(self, published: dict[str, Any]) -> dict[str, Any] | None:
        """The public view of a payment as one state change published it (server-sent events): an in-flight state
        is shown as announced even when the payment has moved on since; a final one as stored now (with its
        transaction and receipt)."""
        if is_final(published["state"]):
            return self.payment_view(published["id"])
        return self.ledger.view_of(published)

    def payment_view(self, payment_id: str) -> dict[str, Any] | None:
        view = self.ledger.payment_view(payment_id)
        live = self.flow.live(payment_id) if self.flow is not None and view is not None else None
        if live is not None and view is not None and not is_final(view["state"]):
            view["state"] = live["state"]
            card = live.get("card")
            if card:  # (``reading`` is shown before the card's details are known: the card stays null until then)
                view["card"] = {k: card.get(k) for k in ("scheme", "masked_pan", "entry_mode", "aid", "label")}
            if is_final(live["state"]):  # a final state the store could not take yet (disk full): and why
                view["error"] = live.get("error")
        if view is not None and self.spooler is not None:
            view["receipt"] = self.spooler.receipt_state(view.get("transaction_id"))
            if (view["receipt"] is None and view["state"] == "approved" and self.spooler.enabled
                    and self.flow is not None and "approved" in (self.flow.timings(payment_id) or {})):
                view["receipt"] = "pending"  # approved by this run a moment ago: its print jobs are being recorded
        if view is not None and self.flow is not None:
            timings = self.flow.timings(payment_id)
            if timings and "approved" in timings:
                view["timings_ms"] = {
                    "card_read": round((timings["card_read"] - timings["card_detected"]) * 1000, 3),
                    "card_to_approved": round((timings["approved"] - timings["card_detected"]) * 1000, 3),
                }
                view["card_detected_monotonic"] = timings["card_detected"]
        return view

    def recent_payments(self, limit: int) -> list[dict[str, Any]]:
        return list(self.ledger.recent_payments(limit))

    def status(self) -> dict[str, Any]:
        readers = _safe(self.reader.status, {"name": "readers", "state": "error", "detail": "status failed"})
        busy = self.flow.busy_payment() if self.flow is not None else None
        current = self.ledger.payment_view(busy) if busy else None
        return {
            "terminal_id": self.enrollment.terminal_id,
            "merchant": (self.enrollment.merchant or {}).get("name"),
            "state": "stopping" if self._stopping.is_set() else "running",
            "readers": _flatten_readers([readers]),
            "reader_error": self.flow.last_error if self.flow is not None else None,
            "printer": _safe(self.spooler.status, {"state": "unknown", "detail": "status failed"}),
            "headoffice": self.hq.status() if self.hq is not None else {"online": False, "detail": "not configured"},
            "queue": _safe(self.ledger.queue_status, {}),
            "batch": _safe(self.ledger.open_batch, {}),
            "payment": current if current and not is_final(current["state"]) else None,
            "mode": self.settings.payments.mode,
            "currency": self.settings.payments.currency,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "versions": {"smartpos": __version__, **_safe(self.ledger.versions, {})},
        }

    def close_batch(self, number: int | None = None) -> dict[str, Any]:
        """Close the open batch; with ``number``, only if it is that one: a request sent again after its answer
        was lost gets batch ``number`` as it was closed (``already_closed``), not the next batch closed empty."""
        from protocol.errors import ValidationError
        from terminal.flow import FlowError

        if number is not None and (earlier := self.ledger.closed_batch(number)) is not None:
            return {**earlier, "already_closed": True}
        if self.flow is not None and self.flow.busy_payment():
            busy = self.ledger.payment(self.flow.busy_payment())
            if busy is not None and not is_final(busy["state"]):
                raise FlowError(409, "terminal_busy", "a payment is in progress; close the batch after it")
        try:
            result = self.ledger.close_batch(number)
        except ValidationError as exc:
            if exc.code != "batch_not_open":
                raise
            if number is not None and (earlier := self.ledger.closed_batch(number)) is not None:
                return {**earlier, "already_closed": True}  # the same request, answered meanwhile
            raise FlowError(409, "batch_not_open", exc.message) from None
        if self.hq is not None:
            result["headoffice"] = self.hq.close_batch(result)
        hq = result.get("headoffice") or {}
        # Printed after head office answered (or did not within a few seconds), so the report says which.
        self.spooler.submit_settlement({**result, "hq_status": hq.get("status", "pending"),
                                        "hq_detail": hq.get("detail")})
        log.info("batch.closed", extra={"batch": result.get("batch"), "count": result.get("count")})
        return {**result, "already_closed": False}

    def print_test_page(self) -> dict[str, Any]:
        """The printer's test page, through the spooler that owns the printer (a technician's selftest --print
        used to write to the device itself, beside the daemon's receipts)."""
        import uuid

        from terminal.flow import FlowError

        if not self.spooler.enabled:
            raise FlowError(409, "no_printer", "no printer is configured")
        job_id = self.spooler.submit_test_page(f"test:{uuid.uuid4().hex}")
        if job_id is None:
            raise FlowError(503, "print_job_not_recorded", "the test page could not be recorded; see the log")
        return self.spooler.job(job_id) or {"id": job_id, "state": "pending"}

    def print_job(self, job_id: int) -> dict[str, Any] | None:
        return self.spooler.job(job_id)

    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    def healthy(self) -> bool:
        return self.health_problem() is None

    def health_problem(self) -> str | None:
        """Why the watchdog should stop pinging (systemd then restarts the daemon), or None when all is well."""
        if self.flow is None or not self.flow.alive():
            return "payment worker not running"
        now = time.monotonic()
        if now - self.loop_heartbeat >= 10:
            return "api event loop stalled"
        if now - self.flow.heartbeat > self._stall_limit_s:
            return f"payment worker stuck for {now - self.flow.heartbeat:.0f} s"
        if self.spooler is not None and not self.spooler.alive():
            return "print spooler not running"
        if self._sync_thread is not None and not self._sync_thread.is_alive() and not self._stop_sync.is_set():
            return "sync not running"
        return None

    # ----- running -----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Run the local API in this (main) thread until a stop is requested."""
        import uvicorn

        from terminal.api import create_app

        app = create_app(self, token=self.settings.api.token)
        config = uvicorn.Config(
            app,
            host=self.settings.api.host,
            port=self.settings.api.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            ws="none",
            server_header=False,
            loop="asyncio",
        )
        self._server = _api_server(config, self)
        if self._stopping.is_set():  # a stop came while the server was being built: it would not see it
            return
        try:
            self._server.run()
        except SystemExit:
            if self.api_url is None:  # uvicorn gives up (and has logged why) when it cannot bind
                raise StartupError(f"api: cannot listen on {self.settings.api.host}:{self.settings.api.port} "
                                   "(address in use or not available; see api.host/api.port)") from None
            raise
        finally:
            self._watchdog.stop()

    def on_listening(self, host: str, port: int) -> None:
        # Bound to every address: local tools reach it on loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        shown = f"[{host}]" if ":" in host else host
        self.api_url = f"http://{shown}:{port}"
        doc = {"url": self.api_url, "pid": os.getpid()}
        path = Path(self.settings.state_dir) / API_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
        ready_s = time.monotonic() - self.started_at
        log.info("daemon.ready", extra={"url": self.api_url, "start_to_ready_s": round(ready_s, 3),
                                         "terminal_id": self.enrollment.terminal_id})
        self.notifier.ready(f"listening on {self.api_url}")
        self._watchdog.start()  # after READY=1: systemd's watchdog counts from there

    def request_stop(self, reason: str = "signal") -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("daemon.stopping", extra={"reason": reason})
        self.notifier.stopping()
        threading.Thread(target=self._drain_then_exit, name="stopper", daemon=True).start()

    def _drain_then_exit(self) -> None:
        # The payment in progress finishes its step (one being recorded is recorded; a wait for a tap ends
        # cancelled), then the API stops; SSE listeners see the final state first.
        if self.flow is not None:
            self.flow.shutdown(timeout=15)
        if self._server is not None:
            self._server.should_exit = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_sync.set()
        if self.hq is not None:
            self.hq.wake()
        if self._sync_thread is not None:
            self._sync_thread.join(10)
        for part, name in ((self.spooler, "spooler"), (self.reader, "reader"), (self.hq, "headoffice"),
                           (self.metrics, "metrics"), (self.ledger, "ledger")):
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.exception("daemon.close_failed", extra={"part": name})
        if self._lock_fd is not None:  # the file is this daemon's (a second daemon refused at start leaves it)
            _unlink_own_api_file(Path(self.settings.state_dir) / API_FILE)
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
        if self.flow is not None:
            log.info("daemon.stopped")
        for handler in logging.getLogger().handlers:
            handler.flush()

    def run(self) -> int:
        # Until the API server installs its own handlers, a stop request during start-up is remembered.
        previous = {
            sig: signal.signal(sig, lambda s, f: self.request_stop(signal.Signals(s).name))
            for sig in STOP_SIGNALS
        } if threading.current_thread() is threading.main_thread() else {}
        try:
            self.start()
            if self._stopping.is_set():
                return 0
            self.serve()
        finally:
            if self.flow is not None:
                self.flow.shutdown(timeout=15)  # idempotent; covers a stop that came before the API served
            self.close()
            for sig, old in previous.items():
                signal.signal(sig, old)
        return 0


# SIGHUP too: a daemon run from a technician's SSH session stops cleanly when the session closes (its payment in
# progress ends cancelled, its files are removed) instead of dying on the spot.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _unlink_own_api_file(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def terminal_data(settings: Settings, enrollment: Any, payment: dict[str, Any]) -> Any:
    """What the terminal tells the card for ``payment`` (amount, currency, type, country, merchant, terminal id)."""
    from drivers.emv import TerminalData

    merchant = enrollment.merchant or {}
    return TerminalData(
        amount_minor=int(payment["amount_minor"]),
        currency=payment["currency"],
        txn_type=0x20 if payment["type"] == "refund" else 0x00,
        country_numeric=settings.payments.country_code,
        merchant_name=str(merchant.get("name") or "SMARTPOS")[:40],
        terminal_id=enrollment.terminal_id[:8],
    )


def _safe(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:
        log.exception("daemon.status_part_failed")
        return default


def _flatten_readers(readers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per reader stack (PC/SC with its readers nested, each nfcpy device), whatever MultiReader wraps."""
    out: list[dict[str, Any]] = []
    for reader in readers:
        nested = reader.get("readers")
        if reader.get("stack") == "multi" and isinstance(nested, list):
            out.extend(_flatten_readers(nested))
        else:
            out.append(reader)
    return out


def _api_server(config: Any, daemon: Daemon) -> Any:
    """uvicorn's Server with our signal handling (SIGTERM = graceful drain, exit 0) and a ready hook.
    Built in a function because uvicorn is imported only when the daemon serves."""
    import uvicorn

    class ApiServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig: int, frame: object) -> None:
                if self.should_exit or daemon.is_stopping():
                    if sig == signal.SIGINT:
                        self.force_exit = True
                    return
                daemon.request_stop(signal.Signals(sig).name)

            original = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, old in original.items():
                    signal.signal(sig, old)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if daemon.is_stopping():  # stopped while uvicorn started: no READY after STOPPING, no serving
                self.should_exit = True
            if self.should_exit:
                return
            sock = self.servers[0].sockets[0].getsockname()
            daemon.on_listening(sock[0], sock[1])

        async def on_tick(self, counter: int) -> bool:
            daemon.loop_heartbeat = time.monotonic()
            return await super().on_tick(counter)

    return ApiServer(config)
