"""The daemon's configuration: schema, defaults, environment overrides, checks.

One YAML file; every key can be overridden from the environment as
``EVENTD_<KEY>__<SUBKEY>`` (``EVENTD_SOURCES__KAFKA__GROUP_ID=eventd-2``),
values read as YAML scalars (``EVENTD_RULES='[/etc/eventd/rules]'``).
Without a file eventd runs on ``DEFAULT_CONFIG``: loopback listeners on the
ecosystem's ports, alerts on stdout, the built-in rule packs.  A file
replaces the defaults: exactly the sources and sinks it lists run.

Every problem is reported with the key it concerns, for example
``sources.kafka.topics: expected a list of strings, got 5``, and the daemon
refuses to start.  Unknown keys are errors too, because a misspelt key that
is silently ignored is a security setting silently not applied.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from eventd.boundedfile import FileTooLarge, read_bounded
from eventd.events.redact import DEFAULT_CREDENTIAL_KEY_PATTERN, check_pattern, check_pointer
from eventd.priority import Priority
from eventd.redact_url import redact_urls_in

ENV_PREFIX = "EVENTD_"
#: ``EVENTD_*`` variables that are not settings: the file to read, and the
#: command-line tools' parsed-rules cache (``engine.yamlcache``).
NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "CACHE_DIR"})


class ConfigError(ValueError):
    """A configuration problem; ``str()`` names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


# --------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Listen:
    """``host:port`` to listen on; ``[v6]:port`` for IPv6."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, key: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
            raise ConfigError(key, f"expected host:port, got {text!r}")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host:
            raise ConfigError(key, f"expected host:port with a host (0.0.0.0 for all), got {text!r}")
        return cls(host, int(port))

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """TLS for an HTTP listener; ``client_ca`` turns on client certificates (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """TLS for a client connection; ``cert``/``key`` for mTLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


# -------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: Listen = Listen("127.0.0.1", 9376)
    #: Open connections kept (Prometheus and the kubelet need a few); more are
    #: closed at once.  Also capped by a share of the descriptor limit.
    max_connections: int = 64
    #: A request head must be complete this long after the connection opens
    #: (or after the first byte of a later request): slow-loris clients are cut.
    header_timeout_seconds: float = 15.0
    #: A kept-alive connection without a request is closed after this.
    idle_timeout_seconds: float = 15.0


@dataclass(frozen=True, slots=True)
class HttpInputConfig:
    """Shared by the HTTP inputs: where to listen and who may post."""

    listen: Listen
    path: str = "/"
    max_body_bytes: int = 12 * 1024 * 1024
    tls: ServerTLS | None = None
    #: File holding the bearer token clients must send; re-read on change.
    token_file: Path | None = None
    #: Listen on a non-loopback address without TLS client certificates or a
    #: token.  Off by default: audit events and alerts are sensitive.
    allow_unauthenticated: bool = False
    #: Bytes of request bodies held at once across all requests of the input
    #: (inflated size), until each is answered; past it new bodies get 503 +
    #: Retry-After.  A body costs ~8x its size while decoded: 48 MiB kept 64
    #: concurrent 11.6 MiB webhook batches under 512 MB RSS.
    max_inflight_bytes: int = 48 * 1024 * 1024
    #: Open connections kept (TLS handshakes included); more are closed at
    #: once.  Also capped by a share of the descriptor limit.
    max_connections: int = 512
    #: A request head must be complete this long after the connection opens
    #: (or after the first byte of a later request), TLS handshake included.
    header_timeout_seconds: float = 15.0
    #: A kept-alive connection without a request is closed after this.
    idle_timeout_seconds: float = 15.0


@dataclass(frozen=True, slots=True)
class AuditWebhookConfig(HttpInputConfig):
    listen: Listen = Listen("127.0.0.1", 9765)
    path: str = "/k8s-audit"
    #: The API server retries whole batches for ~2.5 min; 5 min covers it.
    dedup_window_seconds: float = 300.0
    #: Identities kept at most (16-byte digests, ~200 bytes each with the
    #: table: 100 MB at the default); past it the oldest are forgotten.
    dedup_max_entries: int = 500_000


@dataclass(frozen=True, slots=True)
class FalcoHttpConfig(HttpInputConfig):
    listen: Listen = Listen("127.0.0.1", 2801)
    path: str = "/"
    max_body_bytes: int = 1024 * 1024
    #: Falco posts one small alert per request: 8 bodies of the 1 MiB cap.
    max_inflight_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FalcoFileConfig:
    """Falco JSON lines (``file_output``/``program_output``); ``-`` is stdin."""

    path: str = "-"
    follow: bool = True
    #: With ``follow``: how often to look for new lines, truncation and rotation.
    poll_interval_seconds: float = 0.25
    #: Longer lines are skipped (reason ``too_large``) without being buffered.
    max_line_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FalcoGrpcConfig:
    address: str = "unix:///run/falco/falco.sock"
    tls: ClientTLS | None = None
    #: ``sub`` keeps a stream open; ``get`` drains once per poll.
    mode: Literal["sub", "get"] = "sub"
    keepalive_seconds: float = 1.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class AuditLogConfig:
    path: Path = Path("/var/log/kubernetes/audit/audit.log")
    #: Where the read position is persisted; none means start at the end.
    checkpoint: Path | None = None
    max_line_bytes: int = 262144
    #: Read rotated files (``audit-<time>.log``, ``.gz``) before the live one.
    backfill: bool = False
    poll_interval_seconds: float = 0.25
    dedup_window_seconds: float = 300.0
    #: As for the webhook: identities kept at most.
    dedup_max_entries: int = 500_000


@dataclass(frozen=True, slots=True)
class KafkaSASL:
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str = ""
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class KafkaSourceConfig:
    bootstrap_servers: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    group_id: str = "eventd"
    tls: ClientTLS | None = None
    sasl: KafkaSASL | None = None
    #: Where a new consumer group starts.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_batch: int = 500
    #: Consumer-group session: a replica silent this long loses its partitions.
    #: Kafka brokers accept 6 to 1800 s by default (group.min/max.session.timeout.ms).
    session_timeout_seconds: float = 10.0
    #: On stop: how long to wait for in-flight alerts to reach the broker
    #: before committing what did; keep it below ``shutdown_grace_seconds``.
    drain_timeout_seconds: float = 10.0
    #: Commit input offsets in the Kafka sink's transaction that produces the
    #: batch's alerts (needs ``sinks.kafka`` on the same cluster, and a
    #: broker with transactions); see ``sinks/kafka_transactions.py``.
    exactly_once: bool = False


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    k8s_audit_webhook: AuditWebhookConfig | None = None
    falco_http: FalcoHttpConfig | None = None
    falco_file: FalcoFileConfig | None = None
    falco_grpc: FalcoGrpcConfig | None = None
    audit_log: AuditLogConfig | None = None
    kafka: KafkaSourceConfig | None = None


@dataclass(frozen=True, slots=True)
class DedupConfig:
    """Identical alerts within a window are sent once, then a summary."""

    window_seconds: float = 300.0
    #: What makes two alerts identical, besides the rule: context keys of the
    #: alert (``namespace``, ``workload``, ``images``, ``user``, ``node``...).
    keys: tuple[str, ...] = ("namespace", "workload", "images")
    #: When the window closes, send one summary alert with the count.
    summary: bool = True
    #: Open windows kept; past it (or ``max_bytes``) the oldest closes early.
    max_windows: int = 10_000
    #: Bytes of the alerts open windows keep for their summaries.
    max_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """A sink's in-memory queue (its lane), bounded in alerts and in bytes.

    Full, a best-effort sink (stdout, Slack, Alertmanager, webhook) drops its
    oldest alerts (counted); a durable sink (Kafka, file) makes the inputs
    wait instead (503 + Retry-After, consumption paused).
    """

    max_alerts: int = 10_000
    max_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """What every sink accepts: which alerts it takes and whether to dedup."""

    #: Least severe priority sent (Falco names; ``debug`` sends everything).
    min_priority: str = "debug"
    #: Only these rules / alerts with any of these tags / from these rule
    #: sources (``k8s_audit``, ``falco``, ``syscall``...); empty = all.
    rules: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    dedup: DedupConfig | None = None
    buffer: BufferConfig = BufferConfig()


@dataclass(frozen=True, slots=True)
class StdoutSinkConfig(SinkConfig):
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, slots=True)
class FileSinkConfig(SinkConfig):
    path: Path = Path("/var/log/eventd/alerts.jsonl")
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, slots=True)
class KafkaRoute:
    """Send matching alerts to another topic (first matching route wins)."""

    topic: str
    rules: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KafkaSinkConfig(SinkConfig):
    bootstrap_servers: tuple[str, ...] = ()
    topic: str = "eventd-alerts"
    routes: tuple[KafkaRoute, ...] = ()
    #: Message key, so one stream stays ordered on a partition: an alert
    #: context key (``namespace``, ``workload``, ``registry``, ``rule``) or ``none``.
    key: str = "namespace"
    acks: Literal["all", "1", "0"] = "all"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    client_id: str = "eventd"
    tls: ClientTLS | None = None
    sasl: KafkaSASL | None = None
    #: Write-ahead spool for alerts the broker has not acknowledged.
    spool_dir: Path = Path("/var/lib/eventd/spool")
    spool_max_bytes: int = 256 * 1024 * 1024
    #: When the spool is full (``spool_max_bytes``, or the disk): ``block``
    #: pushes back on the inputs until the broker drains it; ``drop_oldest``
    #: and ``drop_newest`` keep taking input and drop alerts (counted).
    spool_full_policy: Literal["block", "drop_oldest", "drop_newest"] = "block"
    request_timeout_seconds: float = 30.0
    #: The transactional producer's id for ``sources.kafka.exactly_once``;
    #: unique per replica and stable across its restarts (default:
    #: ``<client_id>-<host name>``, the pod name in Kubernetes).
    transactional_id: str = ""


@dataclass(frozen=True, slots=True)
class HttpSinkConfig(SinkConfig):
    """Shared by the HTTP incident channels."""

    timeout_seconds: float = 10.0
    max_retries: int = 5
    retry_backoff_seconds: float = 1.0
    max_concurrency: int = 2
    tls: ClientTLS | None = None
    dedup: DedupConfig | None = field(default_factory=DedupConfig)


@dataclass(frozen=True, slots=True)
class SlackSinkConfig(HttpSinkConfig):
    #: The incoming-webhook URL is a secret: read it from a file.
    webhook_url_file: Path = Path("/etc/eventd/slack/webhook-url")
    #: Sender name, honoured by legacy incoming webhooks only (a Slack app's
    #: webhooks post as the app and ignore it); empty: not sent.
    username: str = ""
    min_priority: str = "warning"


@dataclass(frozen=True, slots=True)
class AlertmanagerSeverity:
    """The ``severity`` label per Falco priority.  The defaults are the values
    Alertmanager routing trees and Prometheus rules use (``critical`` pages),
    grouped as falcosidekick groups them (Error is a warning)."""

    emergency: str = "critical"
    alert: str = "critical"
    critical: str = "critical"
    error: str = "warning"
    warning: str = "warning"
    notice: str = "info"
    informational: str = "info"
    debug: str = "info"


@dataclass(frozen=True, slots=True)
class AlertmanagerSinkConfig(HttpSinkConfig):
    #: Base URL; alerts are posted to ``<url>/api/v2/alerts``.
    url: str = "http://127.0.0.1:9093"
    token_file: Path | None = None
    #: ``endsAt`` = ``startsAt`` + this: Alertmanager resolves silently after.
    resolve_after_seconds: float = 3600.0
    #: ``generatorURL`` of every alert: an absolute http(s) URL (a dashboard),
    #: ``{rule}`` replaced by the URL-quoted rule name; empty: none is sent.
    generator_url: str = ""
    #: ``runbook_url`` annotation, absolute, ``{rule}`` as above; empty: none.
    runbook_url: str = ""
    severity: AlertmanagerSeverity = field(default_factory=AlertmanagerSeverity)
    min_priority: str = "warning"


@dataclass(frozen=True, slots=True)
class WebhookSinkConfig(HttpSinkConfig):
    url: str = ""
    token_file: Path | None = None
    #: Sign the body with HMAC-SHA256 using the key in this file.
    hmac_secret_file: Path | None = None
    signature_header: str = "X-Eventd-Signature-256"
    dedup: DedupConfig | None = None


@dataclass(frozen=True, slots=True)
class SinksConfig:
    stdout: StdoutSinkConfig | None = None
    file: FileSinkConfig | None = None
    kafka: KafkaSinkConfig | None = None
    slack: SlackSinkConfig | None = None
    alertmanager: AlertmanagerSinkConfig | None = None
    webhook: WebhookSinkConfig | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    #: Distinct values kept per metric label taken from events; others are
    #: counted under ``other`` (guards Prometheus against cardinality blow-ups).
    label_value_cap: int = 100
    #: Longer event-supplied label values are cut to this many characters.
    label_value_max_length: int = 128
    #: Registries (and registry/path prefixes) counted as trusted in
    #: ``eventd_image_pulls_total``; keep in step with eventd_allowed_registries.
    trusted_registries: tuple[str, ...] = ("myregistry.io", "gcr.io/my-project", "docker.io/library")
    #: Also export falco-exporter's ``falco_events`` family for received Falco
    #: alerts (its labels include host and pod names, capped as above).
    falco_events: bool = False


@dataclass(frozen=True, slots=True)
class RedactPath:
    """One more place to redact: a JSON pointer into the objects of a resource."""

    #: ``objectRef.resource`` of the audit events (``ingresses``, ``configmaps``...),
    #: or ``falco`` for Falco alerts (the pointer then starts at the alert).
    resource: str
    #: JSON pointer inside the request/response object (and its list items and
    #: JSON patches); ``*`` matches any key or index: ``/metadata/annotations/*``.
    pointer: str


@dataclass(frozen=True, slots=True)
class RedactionConfig:
    """What eventd redacts from events before rules, alerts and sinks see them.

    Secrets are always redacted, whatever their shape; this section adds the
    credentials that other objects carry.  The defaults are on: turning one
    off lets those values reach every sink.
    """

    #: Names that look like credentials (a regular expression searched
    #: case-insensitively): ConfigMap keys, env variable names, ``NAME=value``.
    credential_key_pattern: str = DEFAULT_CREDENTIAL_KEY_PATTERN
    #: ConfigMap ``data``/``binaryData`` values whose key matches.
    configmaps: bool = True
    #: ``env[].value`` of pods and workload pod templates whose name matches.
    pod_env: bool = True
    #: Credentials in Falco alerts' ``output_fields`` (and the same in ``output``).
    falco_output_fields: bool = True
    extra_paths: tuple[RedactPath, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    #: Rule files and directories in load order; empty means the built-in packs.
    rules: tuple[str, ...] = ()
    rule_matching: Literal["first", "all"] = "first"
    #: Reload rules when a rule file changes (SIGHUP always reloads).
    watch_rules: bool = False
    #: Give a rule without ``source:`` the one source its fields belong to
    #: (off: Falco's behaviour, such a rule is a skipped syscall rule).
    rules_infer_source: bool = False
    #: Refuse eventd's extensions to the rule language (``pmatch`` and string
    #: operators on list fields) as Falco would (``--falco-strict``).
    rules_strict: bool = False
    #: Gatekeeper Constraint files (AllowedRegistries, K8sAllowedRepos): their
    #: entries become ``eventd_allowed_registries`` and each adds admission-
    #: bypass rules honouring its ``match`` (see ``eventd/gatekeeper.py``).
    gatekeeper_constraints: tuple[str, ...] = ()
    #: Bounds of the image-pull secret names learned per namespace
    #: (``ka.target.pull_secret``): entries, and bytes of names.
    pull_secrets_max_entries: int = 10_000
    pull_secrets_max_bytes: int = 1024 * 1024
    #: Hostname put in alerts raised from audit events (default: this host, or $NODE_NAME).
    hostname: str = ""
    #: Cluster name added to every alert.
    cluster: str = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    #: Batches waiting for the matcher before inputs are pushed back.  A
    #: webhook batch is up to 400 decoded events (~3 MB): 32 bounds memory.
    queue_size: int = 32
    #: The same queue's bound in input bytes (Kafka records, file lines).
    queue_max_bytes: int = 64 * 1024 * 1024
    #: On SIGTERM: how long to drain queues and flush sinks before exiting.
    shutdown_grace_seconds: float = 20.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto``: console lines when stderr is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    #: ``auto``: uvloop when installed (the ``uvloop`` extra; on in the
    #: container image), else asyncio's own loop.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


DEFAULT_CONFIG = Config(
    sources=SourcesConfig(k8s_audit_webhook=AuditWebhookConfig(), falco_http=FalcoHttpConfig()),
    sinks=SinksConfig(stdout=StdoutSinkConfig()),
)


# ------------------------------------------------------------------- building


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or the defaults), apply ``EVENTD_*`` overrides, validate."""
    environ = os.environ if environ is None else environ
    if path is None:
        data: dict[str, Any] = to_plain(DEFAULT_CONFIG)
    else:
        try:
            text = read_bounded(path).decode("utf-8")
        except FileTooLarge as err:
            limit = err.limit
            raise ConfigError("", f"{path}: larger than {limit} bytes, the limit for a config file") from None
        except OSError as err:
            raise ConfigError("", f"cannot read config {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError("", f"{path}: not UTF-8 text (byte {err.start})") from None
        try:
            loaded = yaml.safe_load(text)
        except RecursionError:
            raise ConfigError("", f"{path}: nested too deeply") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError("", f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{path}: expected a mapping of settings at the top level")
        data = loaded
    apply_env(data, environ)
    return build(Config, data, "")


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Overlay ``EVENTD_A__B=value`` onto ``data['a']['b']`` (YAML scalar)."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts):
            raise ConfigError(
                name, f"environment variable {name} names no setting (use EVENTD_<KEY>__<SUBKEY>)"
            )
        try:
            value = yaml.safe_load(environ[name])
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(
                ".".join(parts), f"environment variable {name} is not a valid YAML value"
            ) from None
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value


def build(cls: type, data: Any, key: str) -> Any:
    """Turn plain YAML data into the dataclass ``cls``, checking every key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a mapping, got {_shown(data)}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(sub, f"unknown key{hint}")
        kwargs[name] = _convert(hints[name], value, sub)
        check = _FIELD_CHECKS.get(str(name))
        if check is not None:
            try:
                check(kwargs[name])
            except ValueError as err:
                raise ConfigError(sub, str(err)) from None
    for name, f in known.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{key}.{name}" if key else name, "required key is missing")
    return cls(**kwargs)


#: Extra checks of values by key name, wherever the key appears.
_FIELD_CHECKS: dict[str, Any] = {
    "min_priority": Priority.parse,
    "credential_key_pattern": check_pattern,
    "pointer": check_pointer,
}


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if len(options) < len(typing.get_args(tp)):
                return None
            raise ConfigError(key, "must not be empty")
        if len(options) == 1:
            # ``{}`` enables an optional section with its defaults (``sinks.stdout: {}``).
            return _convert(options[0], value, key)
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"invalid value {_shown(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"expected one of {', '.join(map(str, allowed))}, got {_shown(value)}")
        return value
    if origin is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_shown(value)}")
        item = typing.get_args(tp)[0]
        return tuple(build(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if isinstance(value, str):  # "a,b" from the environment or for convenience
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str | Path) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {_shown(value)}")
        return tuple(str(v) for v in value)
    if tp is Listen:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected host:port, got {_shown(value)}")
        return Listen.parse(value, key)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, {} if value is None else value, key)
    if tp is Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(key, f"expected a path, got {_shown(value)}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(key, f"expected a positive integer, got {_shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise ConfigError(key, f"expected a finite non-negative number, got {_shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_shown(value)}")
        return value
    raise ConfigError(key, f"unsupported setting type {tp!r}")  # a bug in the schema


def _shown(value: Any) -> str:
    """A refused value for an error message; URLs in it lose their credentials."""
    text = redact_urls_in(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def to_plain(obj: Any) -> Any:
    """A config (or part of it) as plain YAML data; the inverse of ``build``."""
    if isinstance(obj, Listen | Path):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return {
            f.name: to_plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj
