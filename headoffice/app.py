"""The head-office HTTP API (FastAPI). OpenAPI at ``/openapi.json``.

No state lives in the process besides the engine and the keystore: nonces, codes, chain heads, parameters and
acquirer rules are in the database, so several ``serve`` processes on one PostgreSQL answer alike.
Terminal endpoints read the raw body themselves because the signature covers its exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from headoffice import apitokens, authorization, batches, enrollment, exports, ingest, parameters
from headoffice.acquirer import AcquirerConnector, AuthRequest, ReversalRequest
from headoffice.clock import utcnow
from headoffice.db import READ_ONLY_OPTION, make_engine, session_factory
from headoffice.errors import HQError
from headoffice.keystore import FileKeystore, Keystore
from headoffice.models import Terminal
from headoffice.settings import HQSettings
from headoffice.terminal_auth import authenticate
from protocol.envelope import VERSIONS as ENVELOPE_VERSIONS
from protocol.openapi import describe_errors

log = logging.getLogger("smartpos.headoffice")
T = TypeVar("T")


class EnrollmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=4, max_length=40)
    public_key: str = Field(min_length=40, max_length=64, description="base64 of the 32-byte Ed25519 public key")


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _body(request: Request) -> bytes:
    """The raw body (the signature covers its exact bytes), refused early when announced too large."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise HQError(413, "body_too_large", f"body above {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HQError(413, "body_too_large", f"body above {MAX_BODY} bytes")
    return body


def _query_time(name: str, value: str) -> datetime:
    """A time from a query parameter in ISO 8601 (extended or basic form; no offset means UTC). Not pydantic's lax
    datetime: it reads a bare number as seconds since 1970, so ``since=20260101`` meant 1970-08-23."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise HQError(400, f"invalid_{name}", f"{name} must be an ISO 8601 time, e.g. 2026-12-01T00:00:00Z") from None


def _signed_path(request: Request) -> str:
    path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return (path + (b"?" + query if query else b"")).decode("latin-1")


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HQError(400, "invalid_json", "request body is not valid JSON") from None


MAX_BODY = 64 * 1024 * 1024
MAX_ID = 2**63 - 1  # ids and batch numbers are BIGINT columns
# A pipelined page that overtook its predecessor waits this long (in total) for it before it is answered "gap".
AHEAD_WAITS = 40
AHEAD_WAIT_S = 0.025


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """Uploads may be gzip-compressed (100k transactions are ~57 MB of JSON); the signature covers what was sent."""
    if len(body) > MAX_BODY:
        raise HQError(413, "body_too_large", f"body above {MAX_BODY} bytes")
    if not encoding or encoding == "identity":
        return body
    if encoding != "gzip":
        raise HQError(415, "unsupported_encoding", "content-encoding must be gzip or none")
    decomp = zlib.decompressobj(wbits=31)
    try:
        out = decomp.decompress(body, MAX_BODY)
    except zlib.error:
        raise HQError(400, "invalid_body", "body is not valid gzip") from None
    if decomp.unconsumed_tail:
        raise HQError(413, "body_too_large", f"uncompressed body above {MAX_BODY} bytes")
    return out


class HeadOffice:
    """What the request handlers share: settings, database sessions, keystore, acquirer connector."""

    def __init__(
        self,
        settings: HQSettings,
        *,
        keystore: Keystore | None = None,
        connector_for: Callable[[Session], AcquirerConnector] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.keystore = keystore or FileKeystore(settings.keystore_dir)
        self.connector_for = connector_for or authorization.simulated_connector

    def run(self, work: Callable[[Session], T], *, read_only: bool = False) -> T:
        """``work(session)`` in one transaction; ``read_only``: it only reads (on SQLite it then takes no write
        lock, so a long export does not hold terminals' uploads)."""
        with self.sessions() as session, session.begin():
            if read_only:
                session.connection(execution_options={READ_ONLY_OPTION: True})
            return work(session)

    async def call(self, work: Callable[[Session], T], *, read_only: bool = False) -> T:
        return await run_in_threadpool(functools.partial(self.run, work, read_only=read_only))

    def terminal_call(
        self, request: Request, body: bytes, work: Callable[[Session, Any], T], *,
        path_terminal: str | None = None, lock: bool = False, touch: bool = True,
    ) -> Callable[[Session], T]:
        headers = dict(request.headers)
        method = request.method
        path = _signed_path(request)

        def run(session: Session) -> T:
            terminal = authenticate(session, headers, method, path, body, window_s=self.settings.signature_window_s,
                                    path_terminal=path_terminal, lock=lock)
            if touch:
                terminal.last_seen_at = utcnow()
            return work(session, terminal)

        return run


def create_app(settings: HQSettings | None = None, **kwargs: Any) -> FastAPI:
    hq = HeadOffice(settings or HQSettings.resolve(), **kwargs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        retries = asyncio.create_task(_retry_owed_reversals(hq))
        try:
            yield
        finally:
            retries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retries

    app = FastAPI(
        title="smartpos head office",
        version="1",
        description="Enrollment, signed terminal uploads, online authorization, settlement batches.",
        lifespan=lifespan,
    )
    app.state.hq = hq

    @app.exception_handler(HQError)
    async def _hq_error(_request: Request, exc: HQError) -> Response:
        return _json(exc.to_dict(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _json(HQError(400, "invalid_json", "request body is not valid JSON").to_dict(), 400)
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _json(HQError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}").to_dict(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths, wrong methods: the same error shape as every other answer.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _json(HQError(exc.status_code, code, str(exc.detail)).to_dict(), exc.status_code)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(PydanticValidationError)
    async def _pyd_validation(_request: Request, exc: PydanticValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _json(HQError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}").to_dict(), 422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": {"code": "internal", "message": "internal error; see head-office logs"}}, 500)

    # -- public ------------------------------------------------------------------------------------------------

    @app.get("/api/v1/health", tags=["public"])
    async def health() -> dict[str, Any]:
        await hq.call(lambda s: s.execute(text("SELECT 1")).scalar())
        return {"status": "ok", "database": hq.engine.dialect.name}

    @app.get("/api/v1/time", tags=["public"])
    async def server_time() -> dict[str, float]:
        return {"server_time": time.time()}

    @app.post("/api/v1/enrollments", tags=["terminals"], status_code=201)
    async def enroll(body: EnrollmentRequest) -> Response:
        def work(session: Session) -> dict[str, Any]:
            terminal, merchant = enrollment.enroll(session, body.code, body.public_key)
            params = parameters.current(session)
            return {
                "terminal_id": terminal.id,
                "merchant": enrollment.merchant_doc(merchant),
                "parameters": dict(params.parameters),
                "deny_list": list(params.deny_list),
                "parameters_version": params.version,
                "hq_public_key": hq.keystore.envelope_public_pem(),  # type: ignore[attr-defined]
                "envelope_versions": list(ENVELOPE_VERSIONS),
                "token_key": _b64(hq.keystore.token_key()),
                "server_time": time.time(),
            }

        return _json(await hq.call(work), 201)

    # -- terminals (signed) ------------------------------------------------------------------------------------

    @app.get("/api/v1/terminals/{terminal_id}/ping", tags=["terminals"])
    async def ping(terminal_id: str, request: Request) -> Response:
        def work(session: Session, terminal: Any) -> dict[str, Any]:
            return {"terminal_id": terminal.id, "server_time": time.time(),
                    "parameters_version": parameters.current_version(session),
                    "envelope_versions": list(ENVELOPE_VERSIONS),
                    "chain": ingest.chain_head(session, terminal)}

        return _json(await hq.call(hq.terminal_call(request, b"", work, path_terminal=terminal_id)))

    @app.get("/api/v1/terminals/{terminal_id}/parameters", tags=["terminals"])
    async def get_parameters(terminal_id: str, request: Request, if_version: int | None = None) -> Response:
        def work(session: Session, _terminal: Any) -> dict[str, Any] | None:
            row = parameters.current(session)
            if if_version is not None and row.version == if_version:
                return None
            return parameters.document(row)

        doc = await hq.call(hq.terminal_call(request, b"", work, path_terminal=terminal_id))
        return Response(status_code=304) if doc is None else _json(doc)

    @app.post("/api/v1/authorizations", tags=["terminals"], openapi_extra=_body_schema(AuthRequest))
    async def authorize(request: Request) -> Response:
        body = await _body(request)

        def check(session: Session, terminal: Any) -> tuple[str, AuthRequest, dict[str, Any] | None, bool, Any]:
            auth = AuthRequest.model_validate(_parse(body))
            existing, denied = authorization.lookup(session, terminal, auth)
            return terminal.id, auth, existing, denied, hq.connector_for(session)

        terminal_id, auth, existing, denied, connector = await hq.call(hq.terminal_call(request, body, check))
        if existing is not None:
            return _json(existing)
        result = await run_in_threadpool(connector.authorize, auth, denied=denied)
        doc, to_reverse = await hq.call(lambda s: authorization.record(s, terminal_id, auth, result))
        if to_reverse is not None:
            # Stored as owed with the answer: whatever happens to this first attempt, the retry pass finishes it,
            # and the terminal gets its answer ("reversed") either way.
            try:
                await run_in_threadpool(pay_owed_reversal, hq, to_reverse)
            except Exception:
                log.exception("first attempt at the owed reversal of authorization %s failed", to_reverse)
        return _json(doc)

    @app.post("/api/v1/authorizations/reversals", tags=["terminals"], openapi_extra=_body_schema(ReversalRequest))
    async def reverse_authorization(request: Request) -> Response:
        """Take back an authorization this terminal asked for (idempotent; may arrive before it)."""
        body = await _body(request)

        def plan(session: Session, terminal: Any) -> tuple[str, ReversalRequest, bool, str | None, Any]:
            reversal = ReversalRequest.model_validate(_parse(body))
            tell, auth_id = authorization.reversal_plan(session, terminal.id, reversal)
            return terminal.id, reversal, tell, auth_id, hq.connector_for(session) if tell else None

        terminal_id, reversal, tell, auth_id, connector = await hq.call(hq.terminal_call(request, body, plan))
        if tell and not await run_in_threadpool(_reverse_at_acquirer, connector, auth_id, reversal):
            # Nothing stored: the terminal keeps the reversal owed and sends it again.
            raise HQError(503, "acquirer_unavailable", "the acquirer did not confirm the reversal; send it again")
        return _json(await hq.call(lambda s: authorization.reverse(s, terminal_id, reversal)))

    @app.post("/api/v1/terminals/{terminal_id}/transactions", tags=["terminals"],
              openapi_extra=_body_schema(ingest.UploadRequest))
    async def upload(terminal_id: str, request: Request) -> Response:
        body = await _body(request)
        raw = _decoded(body, request.headers.get("content-encoding"))
        # 1. who is it (signature, nonce) - short transaction, before any expensive work is done for the caller
        # (no last_seen update here: that row write would queue behind a pipelined predecessor's lock)
        known_head = await hq.call(hq.terminal_call(request, body, lambda _s, t: t.head_sequence,
                                                    path_terminal=terminal_id, touch=False))
        # 2. the CPU work per row, outside any lock or transaction (parsing included: the event loop stays free for
        # the worker's other connections, and the parsed page is also released in the thread)
        prepared = await run_in_threadpool(
            lambda: ingest.prepare_page(_parse(raw), terminal_id, hq.keystore, known_head=known_head)
        )

        # 3. continue the chain under the terminal's row lock
        def apply(session: Session, wait_ahead: bool) -> dict[str, Any]:
            terminal = session.execute(
                select(Terminal).where(Terminal.id == terminal_id).with_for_update()
            ).scalar_one()
            terminal.last_seen_at = utcnow()
            result = ingest.apply_page(session, terminal, prepared, wait_ahead=wait_ahead)
            # Lets the terminal notice changed parameters without asking on every sync.
            result["parameters_version"] = parameters.current_version(session)
            # The sealed-envelope formats this head office opens: a terminal seals v2 only once it has seen 2 here
            # (a 0.1 head office says nothing and opens only v1).
            result["envelope_versions"] = list(ENVELOPE_VERSIONS)
            return result

        for _attempt in range(AHEAD_WAITS):
            try:
                return _json(await hq.call(lambda s: apply(s, True)))
            except ingest.Ahead:
                await asyncio.sleep(AHEAD_WAIT_S)
        return _json(await hq.call(lambda s: apply(s, False)))

    @app.post("/api/v1/terminals/{terminal_id}/batches/{batch_no}/close", tags=["terminals"],
              openapi_extra=_body_schema(batches.CloseRequest))
    async def close_batch(terminal_id: str, request: Request, batch_no: int = Path(ge=1, le=MAX_ID)) -> Response:
        body = await _body(request)

        def work(session: Session, terminal: Any) -> dict[str, Any]:
            return batches.close(session, terminal, batch_no, batches.CloseRequest.model_validate(_parse(body)))

        return _json(await hq.call(hq.terminal_call(request, body, work, path_terminal=terminal_id)))

    # -- staff (API token) -------------------------------------------------------------------------------------

    def staff(request: Request, work: Callable[[Session], T]) -> Callable[[Session], T]:
        header = request.headers.get("authorization")

        def run(session: Session) -> T:
            apitokens.check_bearer(session, header)
            return work(session)

        return run

    @app.get("/api/v1/batches", tags=["staff"])
    async def list_batches(
        request: Request,
        status: str | None = Query(None, description="open, balanced or out_of_balance"),
        since: str | None = Query(None, description="ISO 8601 time: changed (closed, evaluated again after a late "
                                  "transaction, or opened, if open) at or after it; no offset = UTC",
                                  json_schema_extra={"format": "date-time"}),
        terminal: str | None = None,
        after: int | None = Query(None, ge=0, le=MAX_ID, description="only batches with an id above this one"),
        limit: int = Query(batches.MAX_LIST, ge=1, le=batches.MAX_LIST),
    ) -> Response:
        # A filter sent empty (`?status=&since=`, as a client with a form of optional filters does) is no filter.
        since_at = _query_time("since", since) if since else None
        docs = await hq.call(staff(request, lambda s: batches.list_batches(
            s, status=status or None, since=since_at, terminal_id=terminal or None, after=after, limit=limit)),
            read_only=True)
        # A full page may have more behind it: ask again with after=next_after.
        return _json({"batches": docs, "next_after": docs[-1]["id"] if len(docs) == limit else None})

    @app.get("/api/v1/batches/{batch_id:int}.csv", tags=["staff"], response_class=Response)
    async def batch_csv(request: Request, batch_id: int = Path(ge=1, le=MAX_ID)) -> Response:
        doc = await hq.call(staff(request, lambda s: batches.batch_doc(s, batch_id)), read_only=True)
        return Response(exports.batch_csv(doc), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"'})

    @app.get("/api/v1/batches/{batch_id:int}", tags=["staff"])
    async def batch_detail(request: Request, batch_id: int = Path(ge=1, le=MAX_ID)) -> Response:
        return _json(await hq.call(staff(request, lambda s: batches.batch_doc(s, batch_id)), read_only=True))

    describe_errors(
        app, statuses=(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
        schemes={
            "staffToken": {"type": "http", "scheme": "bearer",
                           "description": "an API token from `smartpos-hq tokens create`"},
            "terminalSignature": {"type": "apiKey", "in": "header", "name": "X-Signature",
                                  "description": "Ed25519 signature of the terminal over method, path, body digest, "
                                                 "X-Timestamp and X-Nonce, with X-Terminal-Id (docs/headoffice.md)"},
        },
        security_for=lambda path: (["staffToken"] if path.startswith("/api/v1/batches") else
                                   ["terminalSignature"] if path.startswith(("/api/v1/terminals",
                                                                             "/api/v1/authorizations")) else []),
    )
    return app


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


ENV_ACQUIRER = "SMARTPOS_HQ_ACQUIRER"


def _reverse_at_acquirer(connector: Any, auth_id: str | None, reversal: ReversalRequest) -> bool:
    """Tell the acquirer; True when it confirmed. A connector without ``reverse`` is logged and counts as confirmed
    (its integration must release holds another way; refusing would keep the terminal sending it for ever)."""
    reverse = getattr(connector, "reverse", None)
    if reverse is None:
        log.warning("acquirer connector %s cannot reverse authorization %s", type(connector).__name__,
                    auth_id or reversal.idempotency_key)
        return True
    try:
        reverse(auth_id, reversal)
    except Exception:
        log.exception("acquirer reversal of %s failed", auth_id or reversal.idempotency_key)
        return False
    return True


def pay_owed_reversal(hq: HeadOffice, auth_id: str, *, force: bool = False) -> bool | None:
    """One attempt at a reversal head office owes the acquirer (``headoffice.authorization``): True when the
    acquirer confirmed it, False when it did not (due again after the back-off), None when nothing was due.
    ``force``: try it even if it is not due yet."""
    claimed = hq.run(lambda s: (authorization.claim_acquirer_reversal(s, auth_id, utcnow(), force=force),
                                hq.connector_for(s)))
    reversal, connector = claimed
    if reversal is None:
        return None
    confirmed = _reverse_at_acquirer(connector, auth_id, reversal)
    hq.run(lambda s: authorization.settle_acquirer_reversal(s, auth_id, confirmed=confirmed, now=utcnow(),
                                                            retry_s=hq.settings.reversal_retry_s))
    if confirmed:
        log.info("acquirer confirmed the owed reversal of authorization %s", auth_id)
    return confirmed


def pay_due_reversals(hq: HeadOffice) -> int:
    """One pass over the owed acquirer reversals that are due; returns how many the acquirer confirmed."""
    return sum(1 for _auth_id, confirmed in pay_owed_reversals(hq) if confirmed)


def pay_owed_reversals(hq: HeadOffice, *, waiting_too: bool = False,
                       limit: int = 100) -> list[tuple[str, bool | None]]:
    """One attempt at each owed acquirer reversal that is due (``waiting_too``: at each one owed, now), oldest
    first: (auth id, what :func:`pay_owed_reversal` answered)."""
    owed = hq.run(lambda s: authorization.due_acquirer_reversals(s, utcnow(), limit=limit, waiting_too=waiting_too))
    return [(auth_id, pay_owed_reversal(hq, auth_id, force=waiting_too)) for auth_id in owed]


async def _retry_owed_reversals(hq: HeadOffice) -> None:
    while True:
        await asyncio.sleep(hq.settings.reversal_retry_s)
        try:
            await run_in_threadpool(pay_due_reversals, hq)
        except Exception:  # the database away, a broken connector: logged, tried again next pass
            log.exception("retrying owed acquirer reversals failed")


def load_connector(spec: str) -> Callable[[Session], AcquirerConnector]:
    """``package.module:factory`` where ``factory(session) -> AcquirerConnector`` (a real acquirer integration)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"acquirer connector {spec!r} must look like package.module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    if not callable(factory):
        raise ValueError(f"acquirer connector {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes: settings come from the environment ``serve`` set."""
    import gc
    import os

    spec = os.environ.get(ENV_ACQUIRER)
    app = create_app(HQSettings.resolve(), connector_for=load_connector(spec) if spec else None)
    # Everything built so far (modules, FastAPI, SQLAlchemy metadata: ~130k objects) lives as long as the worker.
    # Frozen, the full collections that large upload pages trigger no longer walk it each time (measured: a full
    # collection took ~0.1 s of a worker's CPU under load).
    gc.freeze()
    return app
