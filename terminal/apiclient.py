"""A small httpx client of the daemon's local API, for the technician commands and the demo.

Where the daemon listens: ``--url`` / ``$SMARTPOS_API_URL``, else the address the running daemon wrote to
``<state_dir>/api.json`` (it does so at start, which also covers ``port = 0``), else ``[api] host``/``port``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from config.settings import Settings
from terminal.payment import FINAL

API_FILE = "api.json"
_FINAL_STATES = frozenset(state.value for state in FINAL)


class ApiCallError(Exception):
    """The daemon answered with an error, or could not be reached. ``code`` is machine readable."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def api_url(settings: Settings, explicit: str | None = None) -> str:
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("SMARTPOS_API_URL"):
        return os.environ["SMARTPOS_API_URL"].rstrip("/")
    try:
        doc = json.loads((Path(settings.state_dir) / API_FILE).read_text())
        if isinstance(doc, dict) and isinstance(doc.get("url"), str):
            return doc["url"].rstrip("/")
    except (OSError, ValueError):
        pass
    host = settings.api.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


class LocalApi:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.resent = False
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LocalApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, resend: int = 0, **kwargs: Any) -> dict[str, Any]:
        """``resend``: times to send the request again when it may have reached the daemon without an answer
        coming back (a timeout, a connection cut): only for requests the daemon makes idempotent.
        ``self.resent`` says afterwards whether the answer is to a request sent again."""
        self.resent = False
        for attempt in range(resend + 1):
            try:
                self.resent = attempt > 0
                response = self._http.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached the daemon
                if self.base_url.endswith(":0"):
                    # [api] port = 0 and no api.json: the daemon is not running (it writes its address when it
                    # listens)
                    raise ApiCallError("daemon_unreachable", "the smartpos daemon is not running "
                                       "(no api.json with its address in the state directory)") from None
                raise ApiCallError(
                    "daemon_unreachable", f"cannot reach the smartpos daemon at {self.base_url} "
                    f"({type(exc).__name__}); is `smartpos run` running?"
                ) from None
            except httpx.TransportError as exc:  # sent, maybe acted on, no answer
                if attempt < resend:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise ApiCallError(
                    "daemon_no_answer", f"the smartpos daemon at {self.base_url} took the request but gave no "
                    f"answer ({type(exc).__name__}); it may be busy or stuck: see `smartpos status`"
                ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            err = (body or {}).get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                raise ApiCallError(str(err.get("code")), str(err.get("message")), response.status_code)
            raise ApiCallError("http_error", f"HTTP {response.status_code}", response.status_code)
        if not isinstance(body, dict):
            raise ApiCallError("bad_response", "the daemon answered something that is not a JSON object")
        return body

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def create_payment(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Sent again with the same key when no answer came back (a timeout): the daemon answers the payment the
        first request created, never a second one armed beside it."""
        key = idempotency_key or str(uuid.uuid4())
        return self._call("POST", "/v1/payments", json=body, headers={"Idempotency-Key": key}, resend=2)

    def payment(self, payment_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/payments/{payment_id}")

    def payments(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/payments", params={"limit": limit})["payments"])

    def cancel(self, payment_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/payments/{payment_id}/cancel")

    def void(self, payment_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/payments/{payment_id}/void")

    def reprint(self, payment_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/payments/{payment_id}/receipt")

    def read_card(self, timeout_s: float) -> dict[str, Any]:
        """What the daemon's readers read within ``timeout_s`` (1 to 60): ``POST /v1/reads``."""
        return dict(self._call("POST", "/v1/reads", json={"timeout_s": timeout_s},
                               timeout=httpx.Timeout(timeout_s + 10.0, connect=5.0))["read"])

    def print_test_page(self) -> dict[str, Any]:
        return self._call("POST", "/v1/printer/test")

    def print_job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/printer/jobs/{int(job_id)}")

    def close_batch(self, number: int | None = None) -> dict[str, Any]:
        """Close the open batch; with ``number`` only that one, and the request is sent again when its answer went
        missing (the daemon answers a batch it closed already as it was, instead of closing the next one)."""
        if number is None:
            return self._call("POST", "/v1/batches/close")
        result = self._call("POST", "/v1/batches/close", json={"batch": number}, resend=2)
        if self.resent and result.get("already_closed"):
            # Closed by this very call, whose first answer went missing: not "closed before" for whoever asked.
            result = {**result, "already_closed": False}
        return result

    def events(self, payment_id: str, timeout: float = 120.0) -> Iterator[dict[str, Any]]:
        """Payment objects as the daemon streams them, until a final state."""
        try:
            with self._http.stream(
                "GET", f"/v1/payments/{payment_id}/events", timeout=httpx.Timeout(timeout, connect=5.0)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiCallError("http_error", f"HTTP {response.status_code}", response.status_code)
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        doc = json.loads(line[6:])
                        yield doc
                        if doc.get("state") in _FINAL_STATES:
                            return  # the stream goes on with the receipt's progress; the caller has its answer
        except httpx.TransportError as exc:
            raise ApiCallError("daemon_unreachable", f"event stream broke ({type(exc).__name__})") from None
