"""The configuration model: one place that says what flowtrap may be told."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    IPvAnyNetwork,
    model_validator,
)

DEFAULT_LISTEN = ("0.0.0.0:2055", "0.0.0.0:4739")
DEFAULT_INTERNAL = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)

Transport = Literal["udp", "tcp", "tls"]
_SCHEMES: dict[str, Transport] = {
    "syslog+udp": "udp",
    "syslog+tcp": "tcp",
    "syslog+tls": "tls",
}
# Ports a syslog target gets when it names none: RFC 5426 (UDP), RFC 5425 (TLS),
# and IANA's syslog-conn for plain TCP (RFC 6587 assigns none).
SYSLOG_PORTS: dict[Transport, int] = {"udp": 514, "tcp": 601, "tls": 6514}

# A NATS subject one can publish to: non-empty tokens joined by dots, with no
# white space and no wildcard (``*``, ``>``).
_SUBJECT = re.compile(r"^[^.\s*>]+(?:\.[^.\s*>]+)*$")

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_endpoint(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` into host and port, or raise ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 0.0.0.0:2055)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: {host!r} is not an IP address; use 0.0.0.0, :: or one "
            "of this host's addresses"
        ) from None
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(
            f"{text!r}: the port must be a number from 1 to 65535 (0 picks a free one)"
        )
    return host, int(port_text)


def _check_endpoint(text: str) -> str:
    """Validate one listen address."""
    parse_endpoint(text)
    return text


def _loopback_by_default(value: Any) -> Any:
    """Let a bare port mean that port on 127.0.0.1."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return f"127.0.0.1:{value}"
    return value


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
MetricsEndpoint = Annotated[
    str, BeforeValidator(_loopback_by_default), AfterValidator(_check_endpoint)
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one event output goes: standard output, a file, syslog or NATS."""

    text: str
    kind: Literal["stdout", "file", "syslog", "nats"]
    path: str = ""
    transport: Transport = "udp"
    host: str = ""
    port: int = 0
    # NATS only: the subject events are published to.
    subject: str = ""


def parse_target(text: str) -> Target:
    """Parse an ``--events`` value, or raise ValueError saying what is accepted.

    ``-`` is standard output; ``syslog+udp://``, ``syslog+tcp://`` and
    ``syslog+tls://HOST[:PORT]`` are syslog servers; ``nats://HOST:PORT/SUBJECT``
    publishes to a NATS subject; ``file:///PATH`` or any other text is a file path.
    """
    text = text.strip()
    if text == "-":
        return Target(text, "stdout")
    if "://" not in text:
        if not text or text.endswith("/"):
            raise ValueError(f"{text!r} is not a file path")
        return Target(text, "file", path=text)

    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"{text!r}: write file:///absolute/path")
        return Target(text, "file", path=parts.path)
    if parts.scheme == "nats":
        return _nats_target(text)
    transport = _SCHEMES.get(parts.scheme)
    if transport is None:
        raise ValueError(
            f"{text!r}: unknown output; use -, a file path, "
            "syslog+udp://, syslog+tcp:// or syslog+tls://HOST[:PORT], "
            "or nats://HOST:PORT/SUBJECT"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a syslog target is only HOST[:PORT]")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    if not host or not _is_host(host):
        raise ValueError(f"{text!r}: {host!r} is not an IP address or host name")
    if port == 0:
        raise ValueError(f"{text!r}: the port must be from 1 to 65535")
    port = port or SYSLOG_PORTS[transport]
    return Target(text, "syslog", transport=transport, host=host, port=port)


def _nats_target(text: str) -> Target:
    """Parse ``nats://HOST:PORT/SUBJECT``: a subject to publish to, no wildcards."""
    url, subject = parse_nats(text)
    if not _SUBJECT.match(subject):
        raise ValueError(
            f"{text!r}: write nats://HOST:PORT/SUBJECT, the subject dot-separated "
            "tokens without spaces or wildcards (for example flowtrap.events)"
        )
    parts = urlsplit(url)
    # parse_nats has checked both.
    return Target(
        text, "nats", host=parts.hostname or "", port=parts.port or 0, subject=subject
    )


def _is_host(host: str) -> bool:
    """Return True for an IP address or a DNS host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host))
    return True


def _one_or_many(value: Any) -> Any:
    """Accept a single string where a list is expected."""
    return [value] if isinstance(value, str) else value


def _check_target(text: str) -> str:
    """Validate one event output."""
    parse_target(text)
    return text


OutputTarget = Annotated[str, AfterValidator(_check_target)]


def parse_nats(text: str) -> tuple[str, str]:
    """Split ``nats://HOST:PORT[/SUBJECT]`` into server URL and subject."""
    parts = urlsplit(text.strip())
    if parts.scheme != "nats" or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: write nats://HOST:PORT")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    if not host or not _is_host(host) or not port:
        raise ValueError(f"{text!r}: write nats://HOST:PORT with a port")
    return f"nats://{parts.netloc}", parts.path.strip("/")


def _check_cluster(text: str) -> str:
    """Validate the cluster's NATS server: nats://HOST:PORT, no subject."""
    if parse_nats(text)[1]:
        raise ValueError(f"{text!r}: the cluster takes nats://HOST:PORT only")
    return text


ClusterUrl = Annotated[str, AfterValidator(_check_cluster)]


class _Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectionConfig(_Section):
    """Which detectors run and how findings are grouped into events."""

    enabled: list[str] = Field(
        default=["cups_browsed_internal_external"],
        description="Detector names to run; an unknown name stops start-up.",
    )
    window_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Findings per key within this become one event (at most a day).",
    )
    lateness_seconds: float = Field(
        default=120.0,
        ge=0,
        le=86_400,
        description="How long after a window ends late flows may still join it.",
    )
    max_open_windows: int = Field(default=100_000, gt=0)
    sample_size: int = Field(
        default=5, ge=0, le=50, description="Flow records kept in each event."
    )
    detectors: dict[str, dict[str, Any]] = Field(
        default={},
        description="Each detector's own settings, by name "
        "([detection.detectors.NAME]); the detector validates them.",
    )


class LimitsConfig(_Section):
    """Caps on the state that exporters can grow."""

    max_exporters: int = Field(default=10_000, gt=0)
    max_templates_per_exporter: int = Field(default=256, gt=0)
    held_flowsets_per_exporter: int = Field(default=64, ge=0)
    held_bytes_per_exporter: int = Field(default=256 * 1024, ge=0)
    held_bytes_total: int = Field(default=32 * 1024 * 1024, ge=0)
    held_max_age_seconds: float = Field(default=600.0, ge=0, le=86_400)
    template_max_age_seconds: float = Field(
        default=4 * 3600.0,
        ge=0,
        description="Templates not sent again within this long expire; 0 keeps "
        "them until withdrawn (for exporters that send templates only at start).",
    )
    max_template_fields_per_exporter: int = Field(default=8_192, gt=0)
    max_template_fields_total: int = Field(
        default=1_000_000,
        gt=0,
        description="All templates together; a field costs about 60 bytes.",
    )
    template_changes_per_second: float = Field(
        default=20.0,
        gt=0,
        description="Template redefinitions allowed per exporter, on average; "
        "resending an unchanged template is free.",
    )
    template_change_burst: float = Field(default=200.0, ge=1)
    template_scope_by_port: bool = Field(
        default=False,
        description="Scope templates by exporter port too (RFC 7011 §8.4); off "
        "because exporters change port when they restart.",
    )


class FileOutputConfig(_Section):
    """How event files are written, rotated and kept."""

    rotate_bytes: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        description="Start a new file before one would grow past this size.",
    )
    rotate_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description="Start a new file when the current one (with data) is this "
        "old; 0 turns time rotation off.",
    )
    keep: int = Field(
        default=14, ge=1, description="Event files kept, the current one included."
    )
    fsync_seconds: float = Field(
        default=1.0, gt=0, description="How often written data is forced to disk."
    )
    max_line_bytes: int = Field(
        default=8192,
        ge=1024,
        description="Longer lines lose flow records from their sample (and are "
        "tagged sample_trimmed); also applies to standard output.",
    )


Facility = Literal[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
    "cron", "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
]  # fmt: skip


class SyslogOutputConfig(_Section):
    """RFC 5424 message settings and TLS material, shared by every syslog target."""

    facility: Facility = "local0"
    app_name: str = Field(default="flowtrap", pattern=r"^[!-~]{1,48}$")
    hostname: str = Field(
        default="",
        pattern=r"^[!-~]{0,255}$",
        description="HOSTNAME of each message; empty means this host's name.",
    )
    max_message_bytes: int = Field(
        default=8192,
        ge=1024,
        le=65_000,
        description="Whole syslog messages are kept under this (rsyslog's default "
        "maxMessageSize is 8 KB); longer events lose flow records from their sample.",
    )
    ca_file: FilePath | None = Field(
        default=None,
        description="CA bundle that signs the TLS server's certificate; the "
        "system's store when unset.",
    )
    cert_file: FilePath | None = Field(
        default=None, description="Client certificate, for servers that ask for one."
    )
    key_file: FilePath | None = Field(default=None, description="Its private key.")
    server_name: str = Field(
        default="",
        description="Name the TLS server's certificate must carry; the target's "
        "host when empty.",
    )

    @model_validator(mode="after")
    def _client_pair(self) -> SyslogOutputConfig:
        """A client certificate needs its key, and the other way round."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class OutputConfig(_Section):
    """Queueing and retries for every output, and per-kind settings."""

    queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Events each output holds while it cannot deliver; past this "
        "new events for that output are dropped and counted.",
    )
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    drain_seconds: float = Field(
        default=10.0,
        ge=0,
        description="At shutdown, how long outputs may take to deliver what they "
        "hold before the rest is dropped and counted.",
    )
    file: FileOutputConfig = FileOutputConfig()
    syslog: SyslogOutputConfig = SyslogOutputConfig()


class Config(_Section):
    """The whole configuration."""

    listen: list[Endpoint] = Field(
        default=list(DEFAULT_LISTEN),
        description="UDP addresses to listen on; each takes v5, v9 and IPFIX.",
    )
    events: Annotated[list[OutputTarget], BeforeValidator(_one_or_many)] = Field(
        default=["-"],
        min_length=1,
        description="Event outputs, each -, a file path, syslog+udp://, "
        "syslog+tcp:// or syslog+tls://HOST[:PORT], or nats://HOST:PORT/SUBJECT.",
    )
    event_format: str = Field(
        default="ecs",
        description="How events are written: ecs (schema v1) or ocsf (1.5).",
    )
    internal_networks: list[IPvAnyNetwork] = Field(
        default=[ipaddress.ip_network(n) for n in DEFAULT_INTERNAL],
        description="Networks that are inside; everything else is external.",
    )
    allowed_exporters: list[IPvAnyNetwork] | None = Field(
        default=None,
        min_length=1,
        description="Exporters that may send; datagrams from others are dropped "
        "and counted. Unset: any host may send.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes that receive and decode UDP export packets, each "
        "exporter always on the same one (SO_REUSEPORT, steered by its address); "
        "detection and outputs stay in one process. 1: one process does all.",
    )
    proxy_protocol_from: list[IPvAnyNetwork] | None = Field(
        default=None,
        min_length=1,
        description="Load balancers whose PROXY v1/v2 headers name the exporter "
        "of each UDP export packet; headers from others are dropped and counted. "
        "Unset: every PROXY header is dropped and counted.",
    )
    metrics: MetricsEndpoint | None = Field(
        default=None,
        description="HOST:PORT (or a bare PORT, on 127.0.0.1) serving /metrics, "
        "/healthz and /readyz; off when unset.",
    )
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    time_tolerance_seconds: float = Field(
        default=86_400.0,
        gt=0,
        le=10 * 365 * 86_400,
        description="Flow times further than this from the export time are "
        "flagged untrusted and replaced by the export time.",
    )
    receive_buffer_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=65_536,
        description="SO_RCVBUF asked for each socket (the kernel may cap it).",
    )
    backlog_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Datagrams read but not yet decoded are held up to this many "
        "bytes (per worker with --workers), so a burst that slows decoding is "
        "absorbed here rather than overflowing the kernel's receive buffer; when "
        "full, reading pauses until half is decoded. Memory is taken only while "
        "decoding falls behind.",
    )
    listen_tcp: list[Endpoint] = Field(
        default=[],
        description="TCP addresses taking IPFIX over TCP (RFC 7011 §10.4), one "
        "exporter per connection; none by default.",
    )
    state_file: Path | None = Field(
        default=None,
        description="Where templates and options state are kept across restarts "
        "(written atomically at stop and every state_save_seconds).",
    )
    state_save_seconds: float = Field(default=60.0, gt=0)
    cluster: ClusterUrl | None = Field(
        default=None,
        description="nats://HOST:PORT of a NATS JetStream server joining "
        "collectors into one cluster that shares findings and writes each event "
        "once; off when unset.",
    )
    detection: DetectionConfig = DetectionConfig()
    limits: LimitsConfig = LimitsConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _distinct_outputs(self) -> Config:
        """The same output twice would write every event twice."""
        targets = [parse_target(text) for text in self.events]
        seen = {
            (t.kind, t.path, t.transport, t.host, t.port, t.subject) for t in targets
        }
        if len(seen) != len(targets):
            raise ValueError("events: an output is listed twice")
        return self

    def targets(self) -> list[Target]:
        """Return the event outputs, parsed."""
        return [parse_target(text) for text in self.events]
