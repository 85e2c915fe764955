"""One settings table (name, default, help), loaded from bastion.toml and BASTION_* variables."""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bastion.errors import ConfigError
from bastion.ssh_algorithms import CIPHERS

CONFIG_FILE = "bastion.toml"
ENV_PREFIX = "BASTION_"


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError("must be a positive number")
    return number


def _minutes(value: Any) -> float:
    """A positive number of minutes up to a year (a larger one would overflow the dates it is added to)."""
    number = _positive_float(value)
    if number > 366 * 24 * 60:
        raise ValueError("must be at most a year of minutes (527040)")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    try:
        number = int(str(value), 10) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError("must be an integer") from None
    if isinstance(value, float) and value != number:
        raise ValueError("must be an integer")
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_int(value: Any) -> int:
    if value in (0, "0"):
        return 0
    return _positive_int(value)


def _non_negative_float(value: Any) -> float:
    if not isinstance(value, bool) and value in (0, "0", "0.0"):
        return 0.0
    return _positive_float(value)


def _optional_host_port(value: Any) -> str:
    text = _optional_str(value)
    if text:
        parse_host_port(text)
    return text


def _level(value: Any) -> int:
    number = _positive_int(value)
    if number not in (1, 2, 3):
        raise ValueError("must be 1, 2 or 3")
    return number


def _nonempty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    if any(ord(c) < 32 for c in value):
        raise ValueError("must not contain control characters")
    return value


def _optional_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if any(ord(c) < 32 for c in value):
        raise ValueError("must not contain control characters")
    return value


def parse_host_port(value: Any) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT); raise ValueError with the reason."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("must be HOST:PORT")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        raise ValueError("must be HOST:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be 0-65535")
    return host, int(port_text)


def _listen(value: Any) -> str:
    parse_host_port(value)
    return value


def _comma_list(value: Any) -> Any:
    """A list setting as given: a TOML list as it is, an environment string split at its commas."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _cidr_list(value: Any) -> tuple[str, ...]:
    value = _comma_list(value)
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a list of addresses or networks")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ValueError(f"not an address or network: {str(item)[:60]!r}") from None
    return tuple(str(item) for item in value)


def _cipher_list(value: Any) -> tuple[str, ...]:
    value = _comma_list(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("must be a non-empty list of cipher names")
    chosen: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError("must be a list of cipher names (strings)")
        if item not in CIPHERS:
            raise ValueError(f"not a cipher the gateway allows: {item[:60]!r} (allowed: {', '.join(CIPHERS)})")
        if item not in chosen:
            chosen.append(item)
    return tuple(chosen)


def _database_url(value: Any) -> str:
    text = _optional_str(value)
    if text and not text.startswith(("sqlite", "postgresql")):
        raise ValueError("must be a sqlite:// or postgresql:// URL")
    return text


def _log_level(value: Any) -> str:
    text = _nonempty_str(value).lower()
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return text


def _device_policy(value: Any) -> str:
    if value not in ("off", "advisory", "required"):
        raise ValueError("must be off, advisory or required")
    return value


def _event_loop(value: Any) -> str:
    if value not in ("uvloop", "asyncio"):
        raise ValueError("must be uvloop or asyncio")
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any]


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "127.0.0.1:8022", "HOST:PORT of the single gateway port (SSH and HTTPS)", _listen),
    Setting("node_name", "", "name of this gateway node in sessions and audit (default: host name)", _optional_str),
    Setting("database_url", "", "SQLAlchemy URL; empty means SQLite in the data directory", _database_url),
    Setting("log_level", "info", "debug, info, warning or error", _log_level),
    Setting("event_loop", "uvloop", "uvloop (libuv: less CPU per packet) or asyncio (the standard library's loop)",
            _event_loop),
    Setting("listener.sniff_timeout", 3.0,
            "seconds to wait for a client's first bytes before treating it as SSH", _positive_float),
    Setting("listener.max_unauthenticated", 256,
            "connections allowed at once before they authenticate; more are closed at once", _positive_int),
    Setting("listener.proxy_protocol_from", (),
            "addresses/networks of load balancers allowed to send PROXY protocol v2", _cidr_list),
    Setting("listener.tls_handshake_timeout", 10.0, "seconds allowed for a TLS handshake", _positive_float),
    Setting("ssh.login_timeout", 60.0, "seconds a client has to authenticate", _positive_float),
    Setting("ssh.rekey_bytes", 1 << 30, "bytes after which session keys are renewed", _positive_int),
    Setting("ssh.rekey_seconds", 3600.0, "seconds after which session keys are renewed", _positive_float),
    Setting("ssh.keepalive_interval", 30.0, "seconds between keepalives to idle clients", _positive_float),
    Setting("ssh.post_quantum_only", False,
            "offer only post-quantum hybrid key exchange (needs OpenSSH 9.9+ clients)", _bool),
    Setting("ssh.ciphers", CIPHERS,
            "ciphers the port offers SSH clients (a selection of the default; the client's order picks among them)",
            _cipher_list),
    Setting("ssh.window", 8 << 20, "SSH channel window in bytes (larger moves bulk data faster)", _positive_int),
    Setting("upstream.connect_timeout", 10.0, "seconds to connect and authenticate to a target", _positive_float),
    Setting("auth.default_min_level", 1, "level a target demands when it names none (1, 2 or 3)", _level),
    Setting("auth.lockout_threshold", 5, "wrong secrets in a row that lock an account", _positive_int),
    Setting("auth.lockout_minutes", 30.0, "minutes an account stays locked (or until `bastion user unlock`)",
            _positive_float),
    Setting("auth.rate_limit_failures", 30,
            "failed attempts one source address may make per window before it is refused", _positive_int),
    Setting("auth.rate_limit_window", 60.0, "seconds of the per-source failure window", _positive_float),
    Setting("auth.device_policy", "off", "device binding for everyone: off, advisory or required", _device_policy),
    Setting("auth.totp_issuer", "Bastion", "issuer name shown by authenticator apps", _nonempty_str),
    Setting("recording.dir", "", "where recordings are written; empty means <data dir>/recordings", _optional_str),
    Setting("recording.flush_interval", 1.0, "seconds between recording flushes (bounds what a crash loses)",
            _positive_float),
    Setting("recording.chunk_bytes", 64 * 1024, "uncompressed bytes per sealed recording chunk", _positive_int),
    Setting("recording.queue_events", 4096, "events buffered per session before the session waits", _positive_int),
    Setting("recording.echo_window", 1.0,
            "seconds to wait for a target to echo input before recording it as hidden", _positive_float),
    Setting("recording.retention_days", 0,
            "days recordings are kept before they are crypto-shredded (0 keeps them; targets may override)",
            _non_negative_int),
    Setting("audit.anchor_file", "", "file the audit chain head is appended to (default <data dir>/audit-anchors.log)",
            _optional_str),
    Setting("audit.anchor_interval", 60.0, "seconds between anchors of the audit chain head", _positive_float),
    Setting("audit.syslog", "", "HOST:PORT of an RFC 5424 syslog receiver (TCP) for audit events; empty: off",
            _optional_host_port),
    Setting("audit.syslog_tls", False, "send audit events to syslog over TLS", _bool),
    Setting("publish.level_public", 1, "level a public dataset demands", _level),
    Setting("publish.level_internal", 1, "level an internal dataset demands", _level),
    Setting("publish.level_confidential", 2, "level a confidential dataset demands", _level),
    Setting("publish.level_secret", 3, "level a secret dataset demands", _level),
    Setting("publish.rows_per_page", 100, "rows of a CSV/TSV view per page", _positive_int),
    Setting("publish.rows_per_day", 10000, "rows one user may view per day, over all datasets", _positive_int),
    Setting("publish.bytes_per_day", 10 << 30, "bytes one user may download per day, over all datasets",
            _positive_int),
    Setting("publish.approval_minutes", 15.0, "minutes an approved download-with-approval stays usable",
            _minutes),
    Setting("publish.download_minutes", 60.0,
            "minutes one counted download of a dataset stays open for the rest of its files (each file once)",
            _minutes),
    Setting("publish.max_file_bytes", 64 << 30, "largest file a dataset may hold", _positive_int),
    Setting("publish.blob_dir", "", "where encrypted dataset blobs live; empty means <data dir>/blobs",
            _optional_str),
    Setting("console.rp_id", "localhost",
            "host name browsers use for the console (WebAuthn relying party id; not an IP address)", _nonempty_str),
    Setting("console.login_level", 1, "level every console login needs (1, 2 or 3)", _level),
    Setting("console.admin_level", 2, "level the admin pages and API need", _level),
    Setting("console.auditor_level", 2, "level the auditor pages and API need", _level),
    Setting("console.idle_timeout", 15.0, "minutes of inactivity after which a console session ends",
            _positive_float),
    Setting("console.public_url", "", "https URL users open the console at (default https://RP_ID:PORT)",
            _optional_str),
    Setting("console.approval_seconds", 120.0, "seconds a browser approval link for an SSH step-up is valid",
            _positive_float),
    Setting("session.idle_timeout", 0.0,
            "minutes without a byte either way after which an SSH or web terminal session ends (0: never)",
            _non_negative_float),
    Setting("policy.recheck_interval", 15.0,
            "seconds between re-checks of live sessions against grants (revocation, expiry)", _positive_float),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def env_name(setting_name: str) -> str:
    """BASTION_ variable for a setting: dots and dashes become underscores."""
    return ENV_PREFIX + setting_name.upper().replace(".", "_").replace("-", "_")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class Config:
    """Validated settings plus the data directory they belong to."""

    data_dir: Path
    values: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def listen(self) -> tuple[str, int]:
        return parse_host_port(self.values["listen"])

    @property
    def node_name(self) -> str:
        return self.values["node_name"] or socket.gethostname()

    @property
    def database_url(self) -> str:
        return self.values["database_url"] or f"sqlite+aiosqlite:///{self.data_dir / 'bastion.db'}"

    @property
    def recordings_dir(self) -> Path:
        return Path(self.values["recording.dir"] or self.data_dir / "recordings")

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def overlaid(self, overrides: dict[str, Any]) -> "Config":
        """This config with `overrides` (a dict the caller keeps and changes) looked up first, live."""
        return Config(self.data_dir, ChainMap(overrides, dict(self.values)))

    def replace(self, **changes: Any) -> "Config":
        values = dict(self.values)
        for name, value in changes.items():
            values[name.replace("__", ".")] = validate(name.replace("__", "."), value, "override")
        return Config(self.data_dir, values)


def validate(name: str, raw: Any, source: str) -> Any:
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"config error: {name}: unknown setting ({source})")
    try:
        return setting.parse(raw)
    except ValueError as exc:
        shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
        raise ConfigError(f"config error: {name}: {exc} (got {shown} from {source})") from None


def load_config(data_dir: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read bastion.toml and BASTION_* overrides, validate every value once."""
    data_dir = Path(data_dir)
    environ = os.environ if environ is None else environ
    values = {setting.name: setting.default for setting in SETTINGS}
    path = data_dir / CONFIG_FILE
    if path.exists():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config error: {path.name}: not valid TOML ({exc})") from None
        for name, raw in _flatten(table).items():
            values[name] = validate(name, raw, CONFIG_FILE)
    known_env = {env_name(setting.name): setting.name for setting in SETTINGS}
    for key, raw in environ.items():
        if key in known_env:
            values[known_env[key]] = validate(known_env[key], raw, key)
    return Config(data_dir, values)


def render_default_toml(listen: str) -> str:
    """The bastion.toml that `init` writes: every setting, commented, with its help."""
    lines = ["# Bastion settings. Each can also be set with its BASTION_* environment variable.", ""]
    section = None
    for setting in SETTINGS:
        head, _, key = setting.name.rpartition(".")
        if head != section and head:
            lines += ["", f"[{head}]"]
            section = head
        value = listen if setting.name == "listen" else setting.default
        lines.append(f"# {setting.help} ({env_name(setting.name)})")
        rendered = _toml_value(value)
        lines.append(f"{key} = {rendered}" if setting.name == "listen" else f"# {key} = {rendered}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
