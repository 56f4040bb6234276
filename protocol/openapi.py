"""What the published OpenAPI documents of the local API and of head office say about errors and authentication.

FastAPI documents a 422 ``{"detail": [...]}`` for every operation with parameters, a shape neither service sends:
both answer ``{"error": {"code", "message"}}``. ``describe_errors`` replaces that with the real error object, lists
the error statuses each service answers with, and declares how callers authenticate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. invalid_amount"},
                "message": {"type": "string", "description": "for people; never holds card data"},
            },
        }
    },
}

_REASONS = {400: "Malformed or invalid request", 401: "Not authenticated", 403: "Not allowed for this caller",
            404: "Not found", 409: "Conflict with the current state", 413: "Body too large",
            410: "Gone (expired)", 415: "Unsupported content encoding", 422: "Invalid request content",
            503: "Temporarily unavailable; retry"}


def describe_errors(app: Any, *, statuses: Iterable[int], schemes: dict[str, dict[str, Any]],
                    security_for: Callable[[str], Sequence[str]],
                    extend: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Make ``app.openapi()`` document the error object for ``statuses`` on every operation, the security
    ``schemes``, and on each path the schemes ``security_for(path)`` names (none: a public path). ``extend(spec)``
    adds what else the service documents, when the document is first built."""
    statuses = sorted(set(statuses))
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema  # type: ignore[no-any-return]
        spec = plain()
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Error"] = ERROR_SCHEMA
        components["securitySchemes"] = schemes
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, operations in spec.get("paths", {}).items():
            names = list(security_for(path))
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status in statuses:
                    responses[str(status)] = {"description": _REASONS.get(status, "Error"), **error}
                if names:
                    operation["security"] = [{name: []} for name in names]
        if extend is not None:
            extend(spec)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
