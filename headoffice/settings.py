"""Where head office keeps its database and keys, from command-line options or the environment.

Defaults make ``smartpos-hq serve`` work with no set-up: a SQLite file and a key directory under
``$SMARTPOS_HQ_HOME`` (default ``~/.local/share/smartpos-hq``). Production passes a PostgreSQL URL and a key
directory shared by every ``serve`` process (or another keystore implementation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protocol.signing import DEFAULT_WINDOW_S

ENV_HOME = "SMARTPOS_HQ_HOME"
ENV_DATABASE_URL = "SMARTPOS_HQ_DATABASE_URL"
ENV_KEYSTORE = "SMARTPOS_HQ_KEYSTORE"
ENV_SIGNATURE_WINDOW = "SMARTPOS_HQ_SIGNATURE_WINDOW_S"
ENV_REVERSAL_RETRY = "SMARTPOS_HQ_REVERSAL_RETRY_S"
# How often a serve process retries the acquirer reversals head office owes (see headoffice.authorization), and the
# first back-off after a failed attempt (doubling up to headoffice.authorization.MAX_REVERSAL_BACKOFF_S).
DEFAULT_REVERSAL_RETRY_S = 30.0


@dataclass(frozen=True)
class HQSettings:
    database_url: str
    keystore_dir: Path
    signature_window_s: int = DEFAULT_WINDOW_S
    reversal_retry_s: float = DEFAULT_REVERSAL_RETRY_S

    @classmethod
    def resolve(
        cls,
        *,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        keystore: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> HQSettings:
        env = os.environ if environ is None else environ
        home_dir = Path(home or env.get(ENV_HOME) or Path.home() / ".local" / "share" / "smartpos-hq")
        url = database_url or env.get(ENV_DATABASE_URL) or f"sqlite:///{home_dir / 'headoffice.sqlite3'}"
        keys = Path(keystore or env.get(ENV_KEYSTORE) or home_dir / "keys")
        window = int(env.get(ENV_SIGNATURE_WINDOW) or DEFAULT_WINDOW_S)
        retry = env.get(ENV_REVERSAL_RETRY) or ""
        try:
            retry_s = float(retry) if retry else DEFAULT_REVERSAL_RETRY_S
        except ValueError:
            raise ValueError(f"${ENV_REVERSAL_RETRY} must be a number of seconds, not {retry!r}") from None
        if not 0.05 <= retry_s <= 3600:
            raise ValueError(f"${ENV_REVERSAL_RETRY} must be between 0.05 and 3600 seconds")
        return cls(database_url=normalise_url(url), keystore_dir=keys, signature_window_s=window,
                   reversal_retry_s=retry_s)

    def to_env(self) -> dict[str, str]:
        """Environment that makes a uvicorn worker process resolve the same settings."""
        return {
            ENV_DATABASE_URL: self.database_url,
            ENV_KEYSTORE: str(self.keystore_dir),
            ENV_SIGNATURE_WINDOW: str(self.signature_window_s),
            ENV_REVERSAL_RETRY: repr(self.reversal_retry_s),
        }

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the only PostgreSQL driver installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
