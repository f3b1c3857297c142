"""
The server configuration: a frozen value read from a TOML file.

Every key of the Go server with its default, plus the keys this project adds.
Errors name the key, so a typo or a wrong type stops start-up with a clear message.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
import typing
from typing import Any
from urllib.parse import urlsplit

import attrs

from hq.auth import TokenEntry

LOG_LEVELS = ("debug", "info", "warn", "error", "off")
#: Values of ``log_format``: lines for people, or one JSON object per line.
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """
    The configuration is invalid; the message names the key and says why.
    """


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _several_cpus() -> bool:
    return _cpu_count() > 1


@attrs.frozen
class Config:
    """
    All settings of one HQ server. See docs/configuration.md for each key.
    """

    server_id: int = 0
    addr: str = "0.0.0.0:19900"
    data_dir: str = ""
    log_level: str = "info"
    log_file: str = ""
    access_log_file: str = ""
    queues: int = 8192
    dispatchers: int = attrs.field(factory=_cpu_count)
    max_workers: int = 0
    shutdown_timeout: int = 10
    job_lifetime: int = 2_419_200
    job_list_default_limit: int = 0
    ui: bool = True
    ui_basename: str = "/ui"
    # Keys added by this project.
    max_output_bytes: int = 1_048_576
    # Requests to workers made by a child process (hq.sender).
    sender_process: bool = attrs.field(factory=_several_cpus)
    max_body_bytes: int = 4_194_304
    request_timeout: int = 30
    trusted_proxies: tuple[str, ...] = ()
    log_format: str = "text"
    metrics: bool = True
    # Retries, delays, idempotency, batches (SPEC §11, §15).
    retries: int = 0
    retry_min_backoff: float = 1.0
    retry_max_backoff: float = 3600.0
    idempotency_ttl: int = 86_400
    max_batch_jobs: int = 10_000
    # The job store (SPEC §13): "" or "sqlite" (in data_dir), or a PostgreSQL URL.
    store: str = ""
    # Seconds a cluster node's claim on a running job lasts without renewal (SPEC §13).
    lease_timeout: float = 30.0
    # Security (SPEC §12; docs/security.md).
    tokens: tuple[TokenEntry, ...] = ()
    listen: str = ""
    signing_secrets: tuple[str, ...] = ()
    deny_networks: tuple[str, ...] = ()
    allow_networks: tuple[str, ...] = ()
    # Flow control (SPEC §16; docs/flow-control.md).
    host_parallelism: int = 0
    adaptive_flow: bool = False

    @property
    def host(self) -> str:
        """
        The host part of ``addr`` (``""`` means every interface).
        """
        return _split_addr(self.addr)[0]

    @property
    def port(self) -> int:
        """
        The port part of ``addr``.
        """
        return _split_addr(self.addr)[1]

    @property
    def postgres_url(self) -> str | None:
        """
        The PostgreSQL URL of ``store``, or ``None`` for the SQLite store in ``data_dir``.
        """
        return None if self.store in ("", "sqlite") else self.store

    @property
    def workers_per_dispatcher(self) -> int:
        """
        How many jobs one dispatcher runs at a time: ``max(1, max_workers)``.
        """
        return max(1, self.max_workers)

    @property
    def ui_path(self) -> str:
        """
        ``ui_basename`` with one leading and no trailing slash, e.g. ``/ui``.
        """
        return "/" + self.ui_basename.strip("/")


_TYPES: dict[str, type] = typing.get_type_hints(Config)

_MINIMUM: dict[str, int] = {
    "queues": 1,
    "dispatchers": 1,
    "max_workers": 0,
    "shutdown_timeout": 0,
    "job_lifetime": 0,
    "job_list_default_limit": 0,
    "max_output_bytes": 0,
    "max_body_bytes": 1024,
    "request_timeout": 1,
    "retries": 0,
    "idempotency_ttl": 1,
    "max_batch_jobs": 1,
    "host_parallelism": 0,
}

_MAXIMUM: dict[str, int] = {"retries": 1000}

#: Keys that take a number of seconds, fractions allowed (an integer is taken too).
_SECONDS = ("retry_min_backoff", "retry_max_backoff", "lease_timeout")

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean (true or false)",
}


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    """
    Check a TOML array of strings (a ``tuple[str, ...]`` key); return it as a tuple.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"'{key}' must be an array of strings, not {value!r}")
    return tuple(value)


def _check_networks(key: str, values: tuple[str, ...]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(
                f"'{key}' must hold IP addresses or networks (such as \"10.0.0.0/8\"), "
                f"not {value!r}"
            ) from None


#: What ``store`` may be, for messages.
_STORE_FORMS = '"sqlite" or a PostgreSQL URL such as "postgresql://hq@db.example:5432/hq"'


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hostpart}"


def _check_store(value: str) -> None:
    if value in ("", "sqlite"):
        return
    shown = _hide_password(value)
    scheme = value.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres") or "://" not in value:
        raise ConfigError(f"'store' must be {_STORE_FORMS}, not {shown!r}")
    try:
        urlsplit(value).port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        raise ConfigError(f"'store' has a bad port: {shown!r}") from None
    # libpq's own parser (through psycopg), imported only when PostgreSQL is asked for.
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(value)
    except psycopg.Error as e:
        message = str(e).strip().replace(value, shown)
        raise ConfigError(f"'store' is not a valid PostgreSQL URL ({message}): {shown!r}") from None


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"'addr' must be host:port with a port from 0 to 65535, not {addr!r}")
    host = host.strip("[]")
    return ("" if host in ("", "0.0.0.0", "*") else host), int(port)


#: Keys checked by :func:`_security_keys`, not by the generic type check.
_SECURITY_KEYS = ("tokens", "signing_secrets")


def _security_keys(values: dict[str, Any]) -> None:
    """
    Check and convert the keys of SPEC §12 in ``values`` (in place).
    """
    from hq.auth import TokenError, parse_tokens
    from hq.signing import SecretError, parse_secrets

    try:
        if "tokens" in values:
            values["tokens"] = parse_tokens(values["tokens"])
        if "signing_secrets" in values:
            values["signing_secrets"] = parse_secrets(values["signing_secrets"])
    except (TokenError, SecretError) as e:
        raise ConfigError(str(e)) from None
    if "listen" in values and "addr" in values:
        raise ConfigError(
            "'listen' and 'addr' are both set: use 'listen' (a Twisted endpoint "
            "description) or 'addr', not both"
        )
    for key in ("deny_networks", "allow_networks"):
        if key in values:
            _check_networks(key, _string_list(key, values[key]))
    if isinstance(values.get("listen"), str) and not values["listen"].strip():
        raise ConfigError("'listen' must be a Twisted endpoint description, such as \"tcp:19900\"")


def config_from_dict(values: dict[str, Any]) -> Config:
    """
    Return the ``Config`` for ``values`` (a parsed TOML table) over the defaults.

    :raises ConfigError: for an unknown key, a wrong type or a bad value.
    """
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise ConfigError(f"unknown configuration key '{unknown[0]}'")
    values = dict(values)
    _security_keys(values)
    for key, value in values.items():
        if key in _SECURITY_KEYS:
            continue
        expected = _TYPES[key]
        if typing.get_origin(expected) is tuple:
            values[key] = _string_list(key, value)
            continue
        if expected is float and type(value) is int:
            values[key] = value = float(value)
        if type(value) is not expected:
            raise ConfigError(
                f"'{key}' must be {_TYPE_NAMES[expected]}, not {type(value).__name__} {value!r}"
            )
        minimum = _MINIMUM.get(key)
        if minimum is not None and typing.cast(int, value) < minimum:
            raise ConfigError(f"'{key}' must be at least {minimum}, not {value}")
        maximum = _MAXIMUM.get(key)
        if maximum is not None and typing.cast(int, value) > maximum:
            raise ConfigError(f"'{key}' must be at most {maximum}, not {value}")
    for key in _SECONDS:
        if key in values and not 0 < values[key] < math.inf:
            raise ConfigError(f"'{key}' must be a number of seconds above 0, not {values[key]}")
    if values.get("lease_timeout", 30.0) < 1:
        value = values["lease_timeout"]
        raise ConfigError(f"'lease_timeout' must be at least 1 second, not {value}")
    if values.get("retry_min_backoff", 1.0) > values.get("retry_max_backoff", 3600.0):
        raise ConfigError("'retry_min_backoff' must not be above 'retry_max_backoff'")
    server_id: int = values.get("server_id", 0)
    if not 0 <= server_id <= 1023:
        raise ConfigError(f"'server_id' must be between 0 and 1023, not {values['server_id']}")
    if "log_level" in values:
        level = values["log_level"].lower() or "info"
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"'log_level' must be one of {', '.join(LOG_LEVELS)}, not {values['log_level']!r}"
            )
        values = dict(values, log_level=level)
    if "log_format" in values and values["log_format"] not in LOG_FORMATS:
        raise ConfigError(
            f"'log_format' must be one of {', '.join(LOG_FORMATS)}, not {values['log_format']!r}"
        )
    if "trusted_proxies" in values:
        _check_networks("trusted_proxies", values["trusted_proxies"])
    if "store" in values:
        _check_store(values["store"])
    if "ui_basename" in values and not values["ui_basename"].strip("/"):
        raise ConfigError("'ui_basename' must name a path below /, such as \"/ui\"")
    config = Config(**values)
    _split_addr(config.addr)
    return config


def load_config(path: str | None) -> Config:
    """
    Read the TOML file at ``path``; with ``None``, return the defaults.

    :raises ConfigError: when the file cannot be read or parsed, or holds a bad key.
    """
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {e.start}); TOML files are UTF-8"
        ) from None
    return config_from_dict(values)


#: Read when no config file is named, if it exists (as the Go server does).
DEFAULT_CONFIG_FILE = "/etc/hq/hq.toml"


def config_path(given: str | None) -> str | None:
    """
    Return the config file to read: the one given, else ``HQ_CONFIG``, else
    ``/etc/hq/hq.toml`` if it exists, else ``None`` (defaults).
    """
    if given:
        return given
    env = os.environ.get("HQ_CONFIG")
    if env:
        return env
    if os.path.exists(DEFAULT_CONFIG_FILE):
        return DEFAULT_CONFIG_FILE
    return None


def read_config(given: str | None, log_level: str | None = None) -> Config:
    """
    Load the configuration, applying a ``--log-level`` (or ``HQ_LOG_LEVEL``) override.

    :raises ConfigError: naming the key or the file at fault.
    """
    config = load_config(config_path(given))
    level = log_level or os.environ.get("HQ_LOG_LEVEL")
    if level:
        # Validate through the same rules as the file.
        config_from_dict({"log_level": level})
        config = attrs.evolve(config, log_level=level.lower())
    return config
