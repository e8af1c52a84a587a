"""eventd's Prometheus metrics, on a registry of its own (one per daemon).

Names follow Prometheus conventions (``eventd_<what>_total``) and label
values that come from events are few and fixed here: source names, reject
reasons, rule names and priority names.  Events never put pod, host or user
names into eventd's own labels (falcosidekick's cardinality explosions).

Two families exist for what people already run:

* the client library's default collectors (``process_*``: CPU, memory,
  descriptors, start time; ``python_info`` and ``python_gc_*``), which
  every Prometheus exporter has and generic dashboards and alerts use;
* optionally (``metrics.falco_events``), falco-exporter's ``falco_events``
  family, so the dashboards and alerts built on falco-exporter keep working
  when eventd receives Falco's alerts instead.  Its labels are
  falco-exporter's, host and pod names included, so every event-derived
  value goes through ``capped`` (``metrics.label_value_cap`` values per
  label, the rest as ``other``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from eventd import __version__
from eventd.config import MetricsConfig

if TYPE_CHECKING:
    from eventd.alerts import Alert

# ``*_created`` series double every labelled counter for no use on dashboards.
disable_created_metrics()


class Metrics:
    """All metrics of one eventd process."""

    def __init__(
        self, label_value_cap: int = 100, label_value_max_length: int = 128, falco_events: bool = False
    ) -> None:
        self.label_value_cap = label_value_cap
        self.label_value_max_length = label_value_max_length
        self._label_values: dict[str, set[str]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process and platform collectors read /proc and the interpreter
        # at scrape time; the library's instances are stateless, so every
        # registry can hold them.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.falco_events: FalcoEvents | None = None
        if falco_events:
            self.falco_events = FalcoEvents(self)
            r.register(self.falco_events)
        self.events_received = Counter(
            "eventd_events_received_total", "Events decoded and accepted, by source.", ["source"], registry=r
        )
        self.events_rejected = Counter(
            "eventd_events_rejected_total",
            "Input refused, by source and reason (invalid JSON, not audit data, too large...).",
            ["source", "reason"],
            registry=r,
        )
        self.events_matched = Counter(
            "eventd_events_matched_total",
            "Events that matched at least one rule, by source.",
            ["source"],
            registry=r,
        )
        self.events_dropped = Counter(
            "eventd_events_dropped_total",
            "Events dropped after acceptance, by source and reason (duplicates, queue full...).",
            ["source", "reason"],
            registry=r,
        )
        self.alerts = Counter(
            "eventd_alerts_total",
            "Alerts raised, by rule, priority and rule source.",
            ["rule", "priority", "source"],
            registry=r,
        )
        self.queue_depth = Gauge("eventd_queue_depth", "Batches waiting for the matcher.", registry=r)
        self.match_latency = Histogram(
            "eventd_match_latency_seconds",
            "Time to match one batch of events and hand its alerts to the sinks.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.rules_loaded = Gauge("eventd_rules_loaded", "Enabled rules in the running rule set.", registry=r)
        self.rule_reloads = Counter(
            "eventd_rule_reloads_total", "Rule reloads, by result (ok, refused).", ["result"], registry=r
        )
        self.source_reconnects = Counter(
            "eventd_source_reconnects_total", "Reconnections of streaming sources.", ["source"], registry=r
        )
        self.source_possible_loss = Counter(
            "eventd_source_possible_loss_total",
            "Times input may have been lost before eventd read it, by source and reason "
            "(a log truncated by copytruncate, a checkpointed file pruned while eventd was down).",
            ["source", "reason"],
            registry=r,
        )
        self.checkpoint_unusable = Counter(
            "eventd_checkpoint_unusable_total",
            "Start-ups that found a source's checkpoint unusable and re-read from the start instead, "
            "by source and reason (invalid: damaged content; unreadable: a directory, permissions, I/O).",
            ["source", "reason"],
            registry=r,
        )
        self.source_up = Gauge(
            "eventd_source_up", "1 while a source is connected / listening.", ["source"], registry=r
        )
        # -- listeners (the ops server "server" and the HTTP inputs, by source name)
        self.listener_connections = Gauge(
            "eventd_listener_connections",
            "Open connections of a listener (TLS handshakes included).",
            ["listener"],
            registry=r,
        )
        self.listener_closed = Counter(
            "eventd_listener_closed_total",
            "Connections eventd closed to protect a listener, by reason (capacity: over the "
            "connection cap; header_timeout: request head too slow; idle_timeout: no request; "
            "tls_handshake: handshake failed; bad_request: malformed HTTP on the ops server).",
            ["listener", "reason"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "eventd_tls_handshake_failures_total",
            "Failed TLS handshakes, by listener and reason (no_certificate, bad_certificate, alert, "
            "protocol, timeout, closed, other).",
            ["listener", "reason"],
            registry=r,
        )
        self.listener_accept_errors = Counter(
            "eventd_listener_accept_errors_total",
            "accept() failures of a listener, by errno (EMFILE: the descriptor limit is reached).",
            ["listener", "reason"],
            registry=r,
        )
        # -- sinks
        self.sink_deliveries = Counter(
            "eventd_sink_deliveries_total", "Alerts delivered, by sink.", ["sink"], registry=r
        )
        self.sink_failures = Counter(
            "eventd_sink_failures_total",
            "Failed delivery attempts, by sink and reason (timeout, status_5xx, connection...).",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_retries = Counter(
            "eventd_sink_retries_total", "Delivery attempts that were retries, by sink.", ["sink"], registry=r
        )
        self.sink_dropped = Counter(
            "eventd_sink_dropped_total",
            "Alerts a sink did not deliver, by sink and reason (spool_full, retries_exhausted...).",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_filtered = Counter(
            "eventd_sink_filtered_total",
            "Alerts a sink's filters or dedup kept back, by sink and reason (filter, duplicate).",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_queue_depth = Gauge(
            "eventd_sink_queue_depth", "Alerts waiting in a sink's memory queue.", ["sink"], registry=r
        )
        self.sink_queue_bytes = Gauge(
            "eventd_sink_queue_bytes",
            "Bytes of the alerts waiting in a sink's memory queue.",
            ["sink"],
            registry=r,
        )
        self.sink_up = Gauge(
            "eventd_sink_up",
            "1 while a sink delivers (or its destination answers probes), 0 while it fails.",
            ["sink"],
            registry=r,
        )
        self.spool_bytes = Gauge(
            "eventd_spool_bytes", "Bytes in a sink's on-disk spool.", ["sink"], registry=r
        )
        self.spool_alerts = Gauge(
            "eventd_spool_alerts", "Alerts in a sink's on-disk spool.", ["sink"], registry=r
        )
        self.spool_capacity_bytes = Gauge(
            "eventd_spool_capacity_bytes", "Configured size limit of a sink's spool.", ["sink"], registry=r
        )
        # -- images
        self.image_pulls = Counter(
            "eventd_image_pulls_total",
            "Container images in created or updated pods and workload templates, by registry "
            "(capped, overflow in 'other') and trust ('trusted' or 'untrusted').",
            ["registry", "trust"],
            registry=r,
        )
        # The name hardening guides alert on (no eventd_ prefix on purpose).
        self.container_image_pulls = Counter(
            "container_image_pulls_total",
            "Container images in created pods and workload templates, by normalised repository "
            "without tag or digest (capped, overflow in 'other').",
            ["image"],
            registry=r,
        )
        self.build_info = Info("eventd_build", "eventd version.", registry=r)
        self.build_info.info({"version": __version__})

    @classmethod
    def configured(cls, config: MetricsConfig) -> Metrics:
        return cls(config.label_value_cap, config.label_value_max_length, config.falco_events)

    def falco_alert(self, alert: Alert) -> None:
        """Count a Falco alert eventd received in ``falco_events`` (when on)."""
        if self.falco_events is not None:
            self.falco_events.observe(alert)

    def capped(self, label: str, value: str) -> str:
        """``value`` cut to ``label_value_max_length`` characters, or ``other``
        once ``label`` already has ``label_value_cap`` distinct values: label
        values an event supplies (a Falco rule name, a registry) cannot blow up
        Prometheus or ``/metrics`` in count or in size."""
        value = value[: self.label_value_max_length]
        seen = self._label_values.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= self.label_value_cap:
            return "other"
        seen.add(value)
        return value

    def exposition(self) -> bytes:
        """The text format served on ``/metrics``."""
        return generate_latest(self.registry)


#: Falco's gRPC ``source`` enum names, which falco-exporter puts in ``source``
#: (``res.Source.String()``); sources outside the enum are plugins.
_GRPC_SOURCES = {"syscall": "SYSCALL", "k8s_audit": "K8S_AUDIT", "internal": "INTERNAL"}


class FalcoEvents(Collector):
    """falco-exporter's ``falco_events{rule,priority,hostname,source,k8s_ns_name,k8s_pod_name}``.

    Label values as falco-exporter sets them (pkg/exporter/exporter.go in
    falcosecurity/falco-exporter): ``priority`` is the number of Falco's
    priority (0 Emergency ... 7 Debug), ``source`` the gRPC enum name
    (``SYSCALL``, ``K8S_AUDIT``, ``INTERNAL``, ``PLUGIN``), the Kubernetes
    names come from ``k8s.ns.name`` and ``k8s.pod.name`` ("" when absent).

    The family is exposed as ``untyped``: falco-exporter's counter is named
    ``falco_events`` without the ``_total`` suffix, which this client library
    adds to every counter sample; the name, not the type, is what queries
    (``rate(falco_events[5m])``) depend on.
    """

    NAME = "falco_events"
    LABELS = ("rule", "priority", "hostname", "source", "k8s_ns_name", "k8s_pod_name")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._counts: dict[tuple[str, ...], int] = {}

    def observe(self, alert: Alert) -> None:
        capped = self._metrics.capped
        fields = alert.output_fields
        key = (
            capped("falco_rule", alert.rule),
            str(int(alert.priority)),
            capped("falco_hostname", alert.hostname),
            _GRPC_SOURCES.get(alert.source, "PLUGIN"),
            self._capped("falco_k8s_ns_name", fields.get("k8s.ns.name")),
            self._capped("falco_k8s_pod_name", fields.get("k8s.pod.name")),
        )
        self._counts[key] = self._counts.get(key, 0) + 1

    def _capped(self, label: str, value: object) -> str:
        """Falco's ``<NA>`` and null are "" (as falco-exporter's missing
        fields), which takes no place under the cap."""
        if not isinstance(value, str) or value in ("", "<NA>"):
            return ""
        return self._metrics.capped(label, value)

    def collect(self) -> Iterator[Metric]:
        family = UnknownMetricFamily(
            self.NAME,
            "Falco alerts received, with falco-exporter's labels (metrics.falco_events).",
            labels=self.LABELS,
        )
        for key, count in list(self._counts.items()):
            family.add_metric(key, count)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield UnknownMetricFamily(self.NAME, "", labels=self.LABELS)
