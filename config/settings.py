"""The terminal's settings: one pydantic model per TOML section, unknown keys refused.

Defaults are what a fresh terminal runs with; ``config/smartpos.toml`` documents every key.
The enrollment command writes ``[terminal] id``, ``state_dir`` and ``[headoffice] url``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path("/etc/smartpos/smartpos.toml")
DEFAULT_STATE_DIR = Path("/var/lib/smartpos")
QUEUE_FILE = "queue.sqlite"  # the offline queue, in the state directory

PaymentMode = Literal["prefer-online", "require-online", "force-offline"]
PAYMENT_MODES: tuple[str, ...] = ("prefer-online", "require-online", "force-offline")


class _Section(BaseModel):
    # strict: "8470" or 1 for a bool in a config file is a mistake to report, not to coerce silently
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


# The device paths nfcpy opens (nfc.ContactlessFrontend): usb[:vid[:pid]] or usb:bus[:dev], tty:NAME[:driver],
# com:PORT[:driver], udp[:host[:port]] (simulation). What the driver takes (drivers.nfc_reader.is_nfcpy_path).
_NFCPY_PATH = re.compile(
    r"usb(:[0-9A-Fa-f]{1,4}(:[0-9A-Fa-f]{1,4})?)?"
    r"|(tty|com):[A-Za-z0-9_.-]+(:[a-z0-9_]+)?"
    r"|udp(:[A-Za-z0-9_.-]+(:[0-9]{1,5})?)?"
)


def _udp_port_ok(path: str) -> bool:
    parts = path.split(":")
    return parts[0] != "udp" or len(parts) < 3 or 1 <= int(parts[2]) <= 65535


def checked_http_url(value: str) -> str:
    """``value`` as an http(s) base URL with no trailing slash; ``ValueError`` says what is wrong with it (a bad
    port or host is found here, naming the key, not at the first request with a bare "Invalid port")."""
    import httpx

    if not value.startswith(("http://", "https://")) or len(value) < len("http://x"):
        raise ValueError("must be an http:// or https:// URL")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain spaces")
    try:
        url = httpx.URL(value)
        url.port  # noqa: B018 -- parsed lazily by some versions: a bad port raises here
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"is not a usable URL ({exc})") from None
    if not url.host:
        raise ValueError("has no host")
    return value.rstrip("/")


class TerminalSection(_Section):
    id: str | None = Field(default=None, min_length=1, max_length=64)
    state_dir: Path = Field(default=DEFAULT_STATE_DIR, strict=False)


class HeadOfficeSection(_Section):
    url: str | None = None
    timeout_s: float = Field(default=5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return checked_http_url(value)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOSTNAME = re.compile(r"(?=.{1,253}$)(?!.*\.\.)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?", re.ASCII)


def check_listen_host(value: str) -> str:
    """An address to listen on: an IP address, or a host name (not a mistyped address such as 999.1.1.1)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value) or value.replace(".", "").isdigit():
        raise ValueError(f"{value!r} is not an IP address or host name")
    return value


class ApiSection(_Section):
    host: str = Field(default="127.0.0.1", min_length=1)
    # 0 picks a free port (tests, several daemons on one machine); the daemon writes the bound port to its state dir.
    port: int = Field(default=8470, ge=0, le=65535)
    token: str | None = Field(default=None, min_length=16)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_listen_host(value)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiSection:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"host {self.host!r} is not loopback, so api.token (16+ characters) is required")
        return self


class ReadersSection(_Section):
    pcsc: bool = True
    pcsc_filter: str | None = None
    # nfcpy device paths, e.g. "usb:072f:2200", "tty:USB0:pn532" or "udp:127.0.0.1:54321" for the simulator
    nfcpy: list[str] = Field(default_factory=list)

    @field_validator("nfcpy")
    @classmethod
    def _nfcpy_paths(cls, value: list[str]) -> list[str]:
        from drivers.nfc_reader import udp_port_problem

        for path in value:
            if not _NFCPY_PATH.fullmatch(path) or not _udp_port_ok(path):
                raise ValueError(f"{path!r} is not an nfcpy device path like 'usb:072f:2200', 'tty:USB0:pn532' or "
                                 "'udp:127.0.0.1:54321'")
            parts = path.split(":")
            if parts[0] == "udp" and len(parts) == 3 and (problem := udp_port_problem(int(parts[2]))):
                raise ValueError(problem)
        if len(set(value)) != len(value):
            raise ValueError("a reader is listed twice")
        return value


class PrinterSection(_Section):
    # None: no printer; receipts are still rendered and kept for reprint.
    uri: str | None = None
    # python-escpos profile name (e.g. "TM-T88V"); unset = the printing driver's default profile
    profile: str | None = None
    timeout_s: float = Field(default=3.0, gt=0, le=60)  # deadline to send one receipt
    status_timeout_s: float = Field(default=0.5, gt=0, le=10)  # a silent printer is "unknown" after this
    # Overrides of the profile's capabilities
    columns: int | None = Field(default=None, ge=16, le=96)
    width_px: int | None = Field(default=None, ge=128, le=2048)
    native_qr: bool | None = None
    codepages: list[str] | None = None
    # How long a receipt that failed (paper out, printer offline) is retried before the cashier must reprint it.
    retry_window_s: float = Field(default=900.0, ge=10, le=7 * 86400)
    # How often an idle printer is asked for its status (what /v1/status and selftest report between receipts).
    status_interval_s: float = Field(default=30.0, ge=1, le=3600)
    # Zone receipt times are printed in (IANA name, e.g. "Europe/Berlin"); unset = the system's local time.
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("uri")
    @classmethod
    def _printer_uri(cls, value: str | None) -> str | None:
        if value is not None:
            from drivers.printer import PrinterUriError, parse_uri

            try:
                parse_uri(value)
            except PrinterUriError as exc:
                raise ValueError(exc.message) from None
        return value


class PaymentsSection(_Section):
    mode: PaymentMode = "prefer-online"
    # How long prefer-online waits for head office before the offline rules decide.
    online_timeout_s: float = Field(default=3.0, gt=0, le=60)
    card_timeout_s: float = Field(default=60.0, gt=0, le=600)
    # Used by `smartpos pay` when no --currency is given.
    currency: str = "EUR"
    # Closed loop (campus, membership, stored value): a UID-only card pays, identified by its keyed UID token.
    # Off by default: in a shop taking payment cards a UID card is "not a payment card".
    closed_loop_uid: bool = False
    # Where the terminal stands (EMV 9F1A, sent to the card): ISO 3166-1 numeric, e.g. 276 Germany, 250 France,
    # 826 United Kingdom. Cards use it for their domestic/international rules.
    country_code: int = Field(default=276, ge=1, le=999)

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        from protocol.amounts import validate_currency
        from protocol.errors import ValidationError

        try:
            return validate_currency(value)
        except ValidationError as exc:
            raise ValueError(exc.message) from None


class CardDataSection(_Section):
    pan_mask: Literal["bin6", "bin8"] = "bin6"


class SyncSection(_Section):
    interval_s: float = Field(default=10.0, gt=0, le=86_400)
    page_size: int = Field(default=500, ge=1, le=5000)


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsSection(_Section):
    # None: no metrics endpoint. Prometheus text format on http://host:port/metrics.
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_listen_host(value)


class Settings(_Section):
    terminal: TerminalSection = Field(default_factory=TerminalSection)
    headoffice: HeadOfficeSection = Field(default_factory=HeadOfficeSection)
    api: ApiSection = Field(default_factory=ApiSection)
    readers: ReadersSection = Field(default_factory=ReadersSection)
    printer: PrinterSection = Field(default_factory=PrinterSection)
    payments: PaymentsSection = Field(default_factory=PaymentsSection)
    # Overrides of the offline risk parameters head office sends (field names of offline_queue.risk.RiskParameters).
    risk: dict[str, Any] = Field(default_factory=dict)
    card_data: CardDataSection = Field(default_factory=CardDataSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    @field_validator("risk")
    @classmethod
    def _risk_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        fields = risk_parameter_fields()
        if fields is None:
            return value
        for key in value:
            if key not in fields:
                raise ValueError(f"unknown risk parameter {key!r} (known: {', '.join(sorted(fields))})")
        from pydantic import ValidationError as PydanticValidationError

        from offline_queue.risk import RiskParameters

        try:
            RiskParameters.model_validate(value)
        except PydanticValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}: {first['msg']}") from None
        return value

    @property
    def state_dir(self) -> Path:
        return self.terminal.state_dir

    @property
    def db_path(self) -> Path:
        return self.terminal.state_dir / QUEUE_FILE


def risk_parameter_fields() -> set[str] | None:
    """Names the offline risk rules accept, or None when the rules module is not part of this build."""
    try:
        from offline_queue.risk import RiskParameters
    except ImportError:
        return None
    if hasattr(RiskParameters, "model_fields"):
        return set(RiskParameters.model_fields)
    import dataclasses

    if dataclasses.is_dataclass(RiskParameters):
        return {f.name for f in dataclasses.fields(RiskParameters)}
    return None
