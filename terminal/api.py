"""The local API the shop's POS front end calls (product.md "Local API").

Every answer is JSON; every error is ``{"error": {"code", "message"}}`` with a 4xx status for anything the caller
got wrong (malformed JSON, wrong types, absurd amounts, unknown ids) and never a stack trace. Bodies are parsed
here rather than by FastAPI so that each mistake gets its own machine-readable code.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol.carddata import redact
from protocol.errors import ValidationError
from protocol.openapi import describe_errors
from terminal import __version__
from terminal.events import PaymentEvents
from terminal.flow import FlowError, PaymentFlow
from terminal.payment import is_final

log = logging.getLogger("smartpos.api")

MAX_BODY_BYTES = 16 * 1024
RECEIPT_WAIT_S = 60.0  # how long an approval's event stream waits for its receipt to print or fail
RECEIPT_POLL_S = 0.1
KEEPALIVE_S = 10.0  # an idle event stream sends a comment this often, and looks at the stored payment again
_PAYMENT_FIELDS = {"type", "amount_minor", "currency", "reference", "mode"}


class TerminalService(Protocol):
    """What the API needs from the running daemon (``terminal.daemon.Daemon``)."""

    flow: PaymentFlow
    events: PaymentEvents

    def payment_view(self, payment_id: str) -> dict[str, Any] | None: ...
    def recent_payments(self, limit: int) -> list[dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...
    def close_batch(self, number: int | None = None) -> dict[str, Any]: ...
    def print_test_page(self) -> dict[str, Any]: ...
    def print_job(self, job_id: int) -> dict[str, Any] | None: ...
    def is_stopping(self) -> bool: ...


class PaymentRequest(BaseModel):
    """Documented shape of ``POST /v1/payments`` (validated by the handler for precise error codes)."""

    type: Literal["sale", "refund"] = "sale"
    amount_minor: int = Field(gt=0, description="integer amount in minor units (cents)")
    currency: str = Field(description="ISO 4217 alpha code", examples=["EUR"])
    reference: str | None = Field(default=None, max_length=64, description="the POS's own reference")
    mode: Literal["prefer-online", "require-online", "force-offline"] | None = None


_OPTIONAL_KEY = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "a retry with the same key is done once"}


def _document_payment_object(spec: dict[str, Any]) -> None:
    # Built when /openapi.json is first asked for, not at start: the idle daemon carries none of it.
    from terminal.api_docs import document_payment_object

    document_payment_object(spec)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


DEFAULT_READ_TIMEOUT_S = 15
MAX_READ_TIMEOUT_S = 60
HANGUP_POLL_S = 0.1  # how often a waiting read checks that its front end is still connected


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # Messages may quote what the caller sent (an amount, a currency, a field name): anything in them shaped like
    # a PAN or track data is masked, whichever field it came in.
    return JSONResponse({"error": {"code": code, "message": redact(message)}}, status_code=status, headers=headers)


def create_app(service: TerminalService, *, token: str | None = None) -> FastAPI:
    app = FastAPI(
        title="smartpos terminal local API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        description="Payments, receipts, status and batch close for the shop's POS front end.",
        redirect_slashes=False,  # /v1/payments/ is a JSON 404, not a bodiless 307
    )

    app.add_middleware(_Guard, token=token)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The backstop: a bug becomes a JSON 500 and one log line, never a traceback to the caller.
        log.error("api.internal_error", exc_info=exc, extra={"path": request.url.path, "method": request.method})
        return error_response(500, "internal_error", "internal error; see the terminal's log")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(FlowError)
    async def _flow_error(request: Request, exc: FlowError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(ValidationError)
    async def _validation_error(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, exc.code, exc.message)

    from offline_queue.errors import StoreError

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        # Disk full, I/O error, lock timeout: nothing was written; the POS may retry or take another payment method.
        log.error("api.store_error", extra={"code": exc.code, "path": request.url.path})
        return error_response(503, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return error_response(400, "invalid_request", f"{where}: {first.get('msg')}" if where else first["msg"])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)

    @app.post(
        "/v1/payments",
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PaymentRequest.model_json_schema()}},
            },
            "parameters": [
                {"name": "Idempotency-Key", "in": "header", "required": True, "schema": {"type": "string"}}
            ],
        },
    )
    async def create_payment(request: Request) -> Response:
        key = _idempotency_key(request, required=True)
        body = await _json_object(request)
        unknown = set(body) - _PAYMENT_FIELDS
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown field {sorted(unknown)[0]!r}")
        payment, created = await run_in_threadpool(service.flow.create, key, body)
        view = await run_in_threadpool(service.payment_view, payment["id"])
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return JSONResponse(view, status_code=201, headers=headers)

    @app.get("/v1/payments")
    async def list_payments(limit: int = 20) -> JSONResponse:
        if not 1 <= limit <= 200:
            raise ApiError(400, "invalid_request", "limit must be between 1 and 200")
        return JSONResponse({"payments": await run_in_threadpool(service.recent_payments, limit)})

    @app.get("/v1/payments/{payment_id}")
    async def get_payment(payment_id: str) -> JSONResponse:
        return JSONResponse(await _view(payment_id))

    @app.get("/v1/payments/{payment_id}/events", response_class=StreamingResponse)
    async def payment_events(payment_id: str) -> StreamingResponse:
        payment_id = (await _view(payment_id))["id"]  # 404 before the stream starts
        return StreamingResponse(
            _event_stream(payment_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/payments/{payment_id}/cancel")
    async def cancel_payment(payment_id: str) -> JSONResponse:
        payment_id = _check_id(payment_id)
        payment = await run_in_threadpool(service.flow.cancel, payment_id)
        return JSONResponse(await run_in_threadpool(service.payment_view, payment["id"]))

    @app.post("/v1/payments/{payment_id}/void", status_code=201, openapi_extra={"parameters": [_OPTIONAL_KEY]})
    async def void_payment(payment_id: str, request: Request) -> JSONResponse:
        payment_id = _check_id(payment_id)
        key = _idempotency_key(request, required=False)
        void, created = await run_in_threadpool(service.flow.void, payment_id, key)
        view = await run_in_threadpool(service.payment_view, void["id"])
        return JSONResponse(view, status_code=201 if created else 200)

    @app.post("/v1/payments/{payment_id}/receipt", status_code=202, openapi_extra={"parameters": [_OPTIONAL_KEY]})
    async def reprint(payment_id: str, request: Request) -> JSONResponse:
        payment_id = _check_id(payment_id)
        key = _idempotency_key(request, required=False) or uuid.uuid4().hex
        request_id = f"{payment_id}:reprint:{key}"
        await run_in_threadpool(service.flow.reprint, payment_id, request_id)
        return JSONResponse({"payment_id": payment_id, "request_id": request_id, "receipt": "pending"}, 202)

    @app.get("/v1/status")
    async def status() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.status))

    @app.post(
        "/v1/reads",
        openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"timeout_s": {"type": "number", "minimum": 1, "maximum": MAX_READ_TIMEOUT_S,
                                         "default": DEFAULT_READ_TIMEOUT_S}}}}}}},
    )
    async def read_card(request: Request) -> JSONResponse:
        """Wait for a tap outside any payment (NDEF member tag or coupon, UID card; a payment card only masked)
        and answer what was read. 408 ``card_timeout`` when nothing came, 409 ``terminal_busy`` while a payment
        or another read is in progress."""
        body = await _json_object(request, empty_ok=True)
        unknown = set(body) - {"timeout_s"}
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown field {sorted(unknown)[0]!r}")
        timeout_s = body.get("timeout_s", DEFAULT_READ_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) \
                or not 1 <= timeout_s <= MAX_READ_TIMEOUT_S:
            raise ApiError(400, "invalid_request", f"timeout_s must be a number from 1 to {MAX_READ_TIMEOUT_S}")
        hung_up = threading.Event()
        reading = asyncio.ensure_future(run_in_threadpool(service.flow.read_card, float(timeout_s), hung_up))
        while not reading.done():
            # A front end that gives up (the cashier skips the member tag) closes the connection: the read ends
            # then, not at its timeout, so that the payment asked for next is not refused as terminal_busy.
            await asyncio.wait((reading,), timeout=HANGUP_POLL_S)
            if not reading.done() and await request.is_disconnected():
                hung_up.set()
                break
        return JSONResponse({"read": await reading})

    @app.post("/v1/reads/cancel")
    async def cancel_read() -> JSONResponse:
        """End the read that waits for a tap (POST /v1/reads, which then answers 409 ``read_cancelled``).
        ``cancelled`` is false when no read was waiting."""
        return JSONResponse({"cancelled": await run_in_threadpool(service.flow.cancel_read)})

    @app.post("/v1/batches/close")
    async def close_batch(request: Request) -> JSONResponse:
        """Close the open batch. Body (optional) ``{"batch": N}``: close it only if N is the open batch, and if N
        is already closed answer it again (``already_closed``), so a request sent again after a lost answer does
        not close the next batch empty."""
        body = await _json_object(request, empty_ok=True)
        unknown = set(body) - {"batch"}
        if unknown:
            raise ApiError(400, "invalid_request", f"unknown field {sorted(unknown)[0]!r}")
        number = body.get("batch")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)
                                   or not 1 <= number <= 2**63 - 1):
            raise ApiError(400, "invalid_request", "batch must be a batch number (a positive integer)")
        return JSONResponse(await run_in_threadpool(service.close_batch, number))

    @app.post("/v1/printer/test", status_code=202)
    async def print_test_page() -> JSONResponse:
        """Print the test page through the daemon's print queue (the daemon owns the printer); answers the job,
        whose state ``GET /v1/printer/jobs/{id}`` follows (pending, sending, then printed, failed or unknown)."""
        return JSONResponse(await run_in_threadpool(service.print_test_page), status_code=202)

    @app.get("/v1/printer/jobs/{job_id}")
    async def print_job(job_id: str) -> JSONResponse:
        if not (job_id.isascii() and job_id.isdigit()) or len(job_id) > 18:
            raise ApiError(404, "not_found", "no print job with this id")
        job = await run_in_threadpool(service.print_job, int(job_id))
        if job is None:
            raise ApiError(404, "not_found", "no print job with this id")
        return JSONResponse(job)

    async def _view(payment_id: str) -> dict[str, Any]:
        view = await run_in_threadpool(service.payment_view, _check_id(payment_id))
        if view is None:
            raise ApiError(404, "not_found", "no payment with this id")
        return view

    async def _event_stream(payment_id: str) -> AsyncIterator[bytes]:
        seq = 0
        last: bytes | None = None
        async with service.events.listen(payment_id) as queue:
            current = await run_in_threadpool(service.payment_view, payment_id)
            while current is not None:
                data = orjson.dumps(current)
                if data != last:
                    seq += 1
                    last = data
                    yield b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, current["state"].encode(), data)
                if service.is_stopping():
                    return
                if is_final(current["state"]):
                    break
                try:
                    raw = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    stored = await run_in_threadpool(service.payment_view, payment_id)
                    if stored is not None and is_final(stored["state"]):
                        current = stored  # final but never announced (its event was lost): the stream still ends
                    continue
                # The state this event announced, not whatever the payment is by the time it is read: "reading"
                # and "authorizing" last milliseconds offline, and a listener must still see each of them.
                current = await run_in_threadpool(service.event_view, raw)
            # An approval's receipt follows it: the stream stays open until the receipt is printed or has failed
            # (event "receipt"), so the front end learns of a paper-out and can offer a reprint without polling.
            deadline = asyncio.get_running_loop().time() + RECEIPT_WAIT_S
            while (current is not None and current.get("receipt") == "pending" and not service.is_stopping()
                   and asyncio.get_running_loop().time() < deadline):
                await asyncio.sleep(RECEIPT_POLL_S)
                current = await run_in_threadpool(service.payment_view, payment_id)
                data = orjson.dumps(current)
                if current is not None and data != last:
                    seq += 1
                    last = data
                    yield b"id: %d\nevent: receipt\ndata: %s\n\n" % (seq, data)

    describe_errors(
        app, statuses=(400, 401, 404, 409, 413, 422, 503),
        schemes={"bearerToken": {"type": "http", "scheme": "bearer",
                                 "description": "[api] token, required when it is set (always beyond loopback)"}},
        security_for=lambda path: [] if path == "/openapi.json" else ["bearerToken"],
        extend=_document_payment_object,
    )
    return app


class _Guard:
    """Bearer token (when configured) and body size, checked before any route runs. Plain ASGI, so the SSE
    streams pass through untouched."""

    def __init__(self, app: Any, *, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and scope.get("path") != "/openapi.json":
            scheme, _, value = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), self.token):
                response = error_response(
                    401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response = error_response(413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _check_id(payment_id: str) -> str:
    """The id in its canonical form (lower case, hyphens): an id copied in upper case finds its payment."""
    try:
        return str(uuid.UUID(payment_id))
    except ValueError:
        raise ApiError(404, "not_found", "no payment with this id") from None


def _idempotency_key(request: Request, *, required: bool) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None or key == "":
        if required:
            raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header (one per payment attempt)")
        return None
    if len(key) > 128 or not key.isprintable():
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 128 printable characters")
    return key


async def _json_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    # Read in pieces and stop at the limit: a chunked body announces no length, and must not be held whole.
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if empty_ok and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    return body
