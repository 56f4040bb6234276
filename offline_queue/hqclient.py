"""The terminal's client for head office: every request signed with the terminal's Ed25519 key.

Errors are typed by what the caller should do: ``HeadOfficeUnreachable`` (network, timeout, 5xx — try again later,
the request may or may not have been processed) and ``HeadOfficeRejected`` (4xx — head office refused this
request; retrying it unchanged will not help). Every upload and authorization is idempotent at head office, so
retrying after ``HeadOfficeUnreachable`` is always safe.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.envelope import announced_versions
from protocol.signing import sign_request

USER_AGENT = "smartpos-terminal/1"


class HeadOfficeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HeadOfficeUnreachable(HeadOfficeError):
    """No usable answer: connection failed or cut, timeout, or a 5xx. Safe to retry.

    ``maybe_delivered`` is false only when the request cannot have reached head office (no connection was made):
    after anything else head office may have acted on it (an authorization may be approved there)."""

    def __init__(self, code: str, message: str, *, maybe_delivered: bool = True) -> None:
        super().__init__(code, message)
        self.maybe_delivered = maybe_delivered


class HeadOfficeBadAnswer(HeadOfficeUnreachable):
    """A 200 whose body is not the answer asked for (a bug, a proxy, a hostile server): nothing of it is applied,
    as after a cut body, so rows stay queued and reversals owed. Asking again soon would get the same answer."""


class HeadOfficeRejected(HeadOfficeError):
    """Head office answered 4xx. ``status`` is the HTTP status, ``code`` head office's machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status

    @property
    def is_auth(self) -> bool:
        """The terminal itself is refused (unknown, bad signature, clock): no transaction is at fault."""
        return self.status in (401, 403)

    @property
    def is_content(self) -> bool:
        """The request's content is refused (malformed, too large, invalid): something in what was sent is at
        fault. Any other 4xx (404, 405, 409, 415, ...) says nothing about the transactions in it."""
        return self.status in (400, 413, 422)


@dataclass(frozen=True)
class AuthorizationResult:
    approved: bool
    code: str | None
    reason: str | None
    auth_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "code": self.code, "reason": self.reason, "auth_id": self.auth_id}


@dataclass(frozen=True)
class SequenceResult:
    sequence: int
    status: str  # accepted | rejected
    reason: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class UploadResult:
    head_sequence: int
    results: list[SequenceResult] = field(default_factory=list)
    parameters_version: int | None = None
    envelope_versions: tuple[int, ...] | None = None  # what head office says it opens (None: a 0.1 head office)

    @property
    def accepted(self) -> list[int]:
        return [r.sequence for r in self.results if r.status == "accepted"]

    @property
    def rejected(self) -> list[SequenceResult]:
        return [r for r in self.results if r.status == "rejected"]


@dataclass(frozen=True)
class ParametersDoc:
    version: int
    parameters: dict[str, Any]
    deny_list: list[str]


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        doc = response.json()
        err = doc.get("error") or {}
        return str(err.get("code") or f"http_{response.status_code}"), str(err.get("message") or response.reason_phrase)
    except (ValueError, AttributeError):
        return f"http_{response.status_code}", response.reason_phrase or "error"


# 4xx answers about the moment, not the request: a timeout at a proxy, "too early", rate limiting. Retried like 5xx.
_TRANSIENT_4XX = (408, 425, 429)


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500 or response.status_code in _TRANSIENT_4XX:
        code, message = _error_of(response)
        raise HeadOfficeUnreachable(code, f"head office error {response.status_code}: {message}")
    if response.status_code >= 400:
        code, message = _error_of(response)
        raise HeadOfficeRejected(response.status_code, code, message)
    return response


def _doc(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        # A 200 with a cut or garbled body: we cannot know what head office did, so it is a retry case.
        raise HeadOfficeUnreachable("bad_response", "head office answer was not valid JSON") from None


REVERSAL_STATUSES = frozenset({"reversed", "already_reversed", "not_approved", "reversed_before_authorization"})
_MAX_SEQUENCE = 2**63 - 1


def _bad(message: str) -> HeadOfficeBadAnswer:
    return HeadOfficeBadAnswer("bad_response", message)


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX_SEQUENCE


def head_office_text(value: Any, max_len: int = 200) -> str | None:
    """A reason head office wrote, as this terminal stores and shows it (:func:`redact_line`), None if no text."""
    from protocol.carddata import redact_line

    return (redact_line(value, max_len) or None) if isinstance(value, str) else None


def _upload_answer(data: Any) -> UploadResult:
    if not isinstance(data, dict) or not isinstance(data.get("results", []), list):
        raise _bad("head office's upload answer is not an object with a list of results")
    results = []
    for r in data.get("results", []):
        if not isinstance(r, dict) or not _whole(r.get("sequence"), 1) or not isinstance(r.get("status"), str) \
                or not isinstance(r.get("duplicate", False), bool):
            raise _bad("head office's upload answer has a result without an integer sequence and a text status")
        results.append(SequenceResult(r["sequence"], r["status"], head_office_text(r.get("reason")),
                                      r.get("duplicate", False)))  # fmt: skip
    head, version = data.get("head_sequence", 0), data.get("parameters_version")
    if not _whole(head) or not (version is None or _whole(version)):
        raise _bad("head office's upload answer has a head_sequence or parameters_version that is no integer")
    return UploadResult(head, results, version, announced_versions(data))


def parameters_doc(data: Any) -> ParametersDoc:
    """Checked whole before anything is stored: a doc this terminal could not apply keeps the parameters it has."""
    from pydantic import ValidationError as PydanticError

    from offline_queue.risk import merge_parameters
    from protocol.tokens import is_token

    if not isinstance(data, dict) or not _whole(data.get("version")) or not isinstance(data.get("parameters"), dict) \
            or not isinstance(data.get("deny_list"), list):
        raise _bad("head office's parameters are not {version, parameters, deny_list}")
    if not all(isinstance(tok, str) and is_token(tok) for tok in data["deny_list"]):
        raise _bad("head office's deny list holds entries that are not card tokens")
    risk = data["parameters"].get("risk", data["parameters"])
    if not isinstance(risk, dict):
        raise _bad("head office's risk parameters are not an object")
    try:
        merge_parameters(risk, None)
    except (PydanticError, ValueError) as exc:
        first = exc.errors()[0] if isinstance(exc, PydanticError) and exc.errors() else None
        where = f" ({'.'.join(map(str, first['loc']))}: {first['msg']})" if first else ""
        raise _bad(f"head office's risk parameters are not valid{where}") from None
    return ParametersDoc(data["version"], data["parameters"], data["deny_list"])


def _authorization_answer(data: Any) -> AuthorizationResult:
    """Head office's 200 to an authorization, checked: ``approved`` a JSON boolean, ``auth_id`` a non-empty string,
    ``code``/``reason`` strings or null. Anything else is no usable answer, as a cut body is: head office may have
    approved, so the caller owes a reversal (a string ``"false"`` must never read as an approval)."""
    if not isinstance(data, dict):
        raise _bad("head office's authorization answer is not a JSON object")
    approved, auth_id = data.get("approved"), data.get("auth_id")
    if not isinstance(approved, bool) or not isinstance(auth_id, str) or not auth_id:
        raise _bad("head office's authorization answer lacks a boolean 'approved' or an 'auth_id'")
    code, reason = data.get("code"), data.get("reason")
    if not (code is None or isinstance(code, str)) or not (reason is None or isinstance(reason, str)):
        raise _bad("head office's authorization answer has a non-text code or reason")
    return AuthorizationResult(approved, code, reason, auth_id)


def enroll(base_url: str, code: str, public_key: str, *, timeout: float = 10.0,
           transport: httpx.BaseTransport | None = None, verify: bool | str = True) -> dict[str, Any]:
    """Unsigned (the terminal has no identity yet): the one-time code authenticates the enrollment."""
    try:
        with httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport, verify=verify,
                          headers={"user-agent": USER_AGENT}) as client:
            response = client.post("/api/v1/enrollments", json={"code": code, "public_key": public_key})
    except httpx.HTTPError as exc:
        raise HeadOfficeUnreachable(
            "unreachable", f"head office {base_url} unreachable: {type(exc).__name__}"
        ) from None
    return _doc(_check(response))


class HeadOfficeClient:
    def __init__(
        self,
        base_url: str,
        terminal_id: str,
        private_key: Ed25519PrivateKey,
        timeout: float = 5.0,
        *,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        compress: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.terminal_id = terminal_id
        self._key = private_key
        self.timeout = timeout
        self.compress = compress
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, verify=verify,
            headers={"user-agent": USER_AGENT},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HeadOfficeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, doc: Any = None, *, timeout: float | None = None,
                 compress: bool = False) -> httpx.Response:
        body = b"" if doc is None else orjson.dumps(doc)
        headers = {}
        if body:
            headers["content-type"] = "application/json"
            if compress:
                body = gzip.compress(body, compresslevel=1)
                headers["content-encoding"] = "gzip"
        # The signature covers the exact path+query and body bytes sent, so build the URL once here.
        url = httpx.URL(self.base_url + path)
        signed_path = url.raw_path.decode("ascii")
        headers.update(sign_request(self._key, self.terminal_id, method, signed_path, body))
        try:
            response = self._http.request(method, url, content=body or None, headers=headers,
                                          timeout=timeout if timeout is not None else self.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            raise HeadOfficeUnreachable("unreachable", f"head office unreachable: {type(exc).__name__}",
                                        maybe_delivered=False) from None
        except httpx.TimeoutException:
            waited = timeout if timeout is not None else self.timeout
            raise HeadOfficeUnreachable("timeout", f"head office did not answer within {waited:g} s") from None
        except httpx.HTTPError as exc:
            raise HeadOfficeUnreachable("unreachable", f"head office unreachable: {type(exc).__name__}") from None
        return _check(response)

    # -- API -------------------------------------------------------------------------------------------------

    def authorize(
        self,
        *,
        idempotency_key: str,
        type: str,
        amount_minor: int,
        currency: str,
        token: str | None = None,
        masked_pan: str | None = None,
        scheme: str | None = None,
        entry_mode: str | None = None,
        reference: str | None = None,
        envelope: str | None = None,
        timeout: float | None = None,
    ) -> AuthorizationResult:
        doc = {
            "idempotency_key": idempotency_key, "type": type, "amount_minor": amount_minor, "currency": currency,
            "token": token, "masked_pan": masked_pan, "scheme": scheme, "entry_mode": entry_mode,
            "reference": reference, "envelope": envelope,
        }
        data = _doc(self._request("POST", "/api/v1/authorizations", doc, timeout=timeout))
        return _authorization_answer(data)

    def reverse(self, *, idempotency_key: str, type: str, amount_minor: int, currency: str,
                reason: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Take back the authorization asked for under ``idempotency_key`` (idempotent; head office answers
        ``reversed``, ``already_reversed``, ``not_approved`` or ``reversed_before_authorization``)."""
        doc = {"idempotency_key": idempotency_key, "type": type, "amount_minor": amount_minor,
               "currency": currency, "reason": reason}
        answer = _doc(self._request("POST", "/api/v1/authorizations/reversals", doc, timeout=timeout))
        if not isinstance(answer, dict) or answer.get("status") not in REVERSAL_STATUSES:
            # Not one of head office's answers: the reversal cannot be taken as done, so it stays owed.
            raise _bad("head office's reversal answer has no known status")
        return answer

    def upload(self, page: list[dict[str, Any]]) -> UploadResult:
        path = f"/api/v1/terminals/{self.terminal_id}/transactions"
        return _upload_answer(_doc(self._request("POST", path, {"transactions": page}, compress=self.compress)))

    def close_batch(self, batch: int, totals: list[dict[str, Any]], *, first_sequence: int | None = None,
                    last_sequence: int | None = None) -> dict[str, Any]:
        path = f"/api/v1/terminals/{self.terminal_id}/batches/{int(batch)}/close"
        doc = {"totals": totals, "first_sequence": first_sequence, "last_sequence": last_sequence}
        answer = _doc(self._request("POST", path, doc))
        if not isinstance(answer, dict) or answer.get("status") not in ("balanced", "out_of_balance"):
            raise _bad("head office's batch close answer is neither balanced nor out_of_balance")
        return answer

    def parameters(self, if_version: int | None = None) -> ParametersDoc | None:
        """The current parameters and deny list, or None when head office still has ``if_version``."""
        path = f"/api/v1/terminals/{self.terminal_id}/parameters"
        if if_version is not None:
            path += f"?if_version={int(if_version)}"
        response = self._request("GET", path)
        if response.status_code == 304:
            return None
        return parameters_doc(_doc(response))

    def ping(self) -> dict[str, Any]:
        """Reachable and authenticated: head office knows this terminal and accepts its signature."""
        return dict(_doc(self._request("GET", f"/api/v1/terminals/{self.terminal_id}/ping")))

    def server_time(self) -> float:
        try:
            response = self._http.get("/api/v1/time")
        except httpx.HTTPError as exc:
            raise HeadOfficeUnreachable("unreachable", f"head office unreachable: {type(exc).__name__}") from None
        return float(_doc(_check(response))["server_time"])

    def clock_offset(self) -> float:
        """Head office time minus local time, seconds (half the round trip is not corrected: ~ms on a LAN)."""
        return self.server_time() - time.time()
