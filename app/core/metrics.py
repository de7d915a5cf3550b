"""The service's metrics, in prometheus-client: one `Metrics` per process (`METRICS`, also
`app.state.metrics`), rendered by `GET /metrics` (docs/operations.md has the table).

Counters whose label sets are known are created at 0 when `Metrics` is built, so the first
event is a step that `rate()` sees, not a series that appears from nowhere.

With `serve --workers N` the process runs in prometheus-client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set up by `prepare_multiprocess` before the workers start): every
worker writes its values to files there and a scrape, answered by any worker, adds them up.
Gauges that are one process's view (the circuit breaker, Bakkt's reachability) are combined
across the live workers (`livemax`, `livemostrecent`); gauges read from the database are
computed by the scrape itself (`app/recovery/router.py`), once, not per worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "fiat_onramp_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latency: the p99 alert's threshold (2.5 s) is a bucket edge.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A Bakkt call includes its retries and backoff: up to about a minute.
BAKKT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# What one call to Bakkt ended as (label `outcome` of `bakkt_requests_total`).
BAKKT_OUTCOMES = (
    "ok",  # a 2xx answer (or a 409 replaying one)
    "rejected",  # a 4xx answer: Bakkt refused, nothing happened
    "rate_limited",  # 429 past what the call may wait
    "unavailable",  # no usable answer, and the request certainly did nothing
    "unknown",  # no usable answer after a send that may have reached Bakkt
    "auth_failed",  # Bakkt refused our credentials or token
    "circuit_open",  # refused here, without calling Bakkt
)
# Label `operation`: one per client method (app/bakkt/client.py).
BAKKT_OPERATIONS = (
    "token",
    "heartbeat",
    "link_url",
    "link_plaid",
    "link_ach",
    "unlink",
    "transfer",
    "get_transaction",
    "list_transactions",
    "wire_instructions",
    "balance",
)
# Label `outcome` of `webhooks_received_total`: the stored event's status in lower case, a
# redelivery, or a delivery refused before storing.
WEBHOOK_OUTCOMES = (
    "received",
    "applied",
    "ignored",
    "parked",
    "unmatched",
    "held",
    "malformed",
    "conflict",
    "duplicate",
    "rejected",
)
# Label `worker` of `job_errors_total` (app/recovery/worker.py's jobs).
JOBS = (
    "settle",
    "sweep",
    "rematch_webhooks",
    "reconcile",
    "retention",
    "expire_links",
    "heartbeat",
)
JOB_ERROR_CAUSES = ("database", "error")


@dataclass(frozen=True, slots=True)
class CounterSpec:
    help: str
    labels: tuple[str, ...] = ()
    # Label sets created at 0 from the start.
    known: tuple[tuple[str, ...], ...] = ()


# The recovery jobs' counters (docs/recovery.md#metrics), counted by name through `inc`.
RECOVERY_COUNTERS: Mapping[str, CounterSpec] = {
    "recovery_drift_total": CounterSpec(
        "Disagreements between Bakkt and our records found by reconciliation",
        ("kind",),
        tuple((k,) for k in ("status", "missing", "unknown_ref", "mismatch", "conflict")),
    ),
    "recovery_settled_unknown_total": CounterSpec(
        "Unknown outcomes settled by finding the transfer at Bakkt"
    ),
    "recovery_resent_total": CounterSpec(
        "Transfers Bakkt never saw, re-sent with the same key and accepted"
    ),
    "recovery_resend_rejected_total": CounterSpec("Re-sent transfers Bakkt rejected (now FAILED)"),
    "recovery_failed_expired_total": CounterSpec(
        "Transfers Bakkt never saw whose key expired (now FAILED)"
    ),
    "recovery_failed_wire_not_retained_total": CounterSpec(
        "Wire withdrawals Bakkt never saw (now FAILED)"
    ),
    "recovery_still_unknown_total": CounterSpec("Settle attempts that left the outcome unknown"),
    "recovery_swept_total": CounterSpec("Open transactions polled at Bakkt by the sweep"),
    "recovery_sweep_moved_total": CounterSpec("Polled transactions whose status moved"),
    "recovery_overdue_alerts_total": CounterSpec(
        "Transactions still pending past their settlement window"
    ),
    "recovery_requests_finished_total": CounterSpec(
        "Consumer requests left unfinished, finished by recovery"
    ),
    "recovery_links_expired_total": CounterSpec(
        "Hosted-link bank accounts FAILED after their page expired"
    ),
    "recovery_webhook_rematched_total": CounterSpec(
        "Stored webhook events retried by the rematch job"
    ),
    "recovery_reconcile_runs_total": CounterSpec(
        "Reconciliation runs, by outcome", ("outcome",), (("ok",), ("partial",))
    ),
    "recovery_reconcile_created_total": CounterSpec(
        "Transactions reconciliation created (webhooks lost)"
    ),
    "recovery_reconcile_moved_total": CounterSpec(
        "Transactions reconciliation moved (webhooks lost)"
    ),
    "recovery_retention_deleted_total": CounterSpec(
        "Rows removed or cleared by retention, by what",
        ("what",),
        (("idempotency_keys",), ("service_processes",), ("webhook_bodies",)),
    ),
    "recovery_skipped_circuit_open_total": CounterSpec(
        "Job cycles skipped while the Bakkt circuit was open",
        ("worker",),
        tuple((j,) for j in JOBS),
    ),
    # Webhooks to the partner's back end (app/partner_webhooks, docs/partner-webhooks.md).
    "partner_webhook_attempts_total": CounterSpec(
        "Webhook sends to the partner's endpoints, by outcome",
        ("outcome",),
        tuple(
            (o,)
            for o in ("delivered", "http_error", "redirect", "timeout", "connection", "refused")
        ),
    ),
    "partner_webhook_endpoints_disabled_total": CounterSpec(
        "Partner webhook endpoints disabled, by reason",
        ("reason",),
        tuple((r,) for r in ("admin", "gone", "failing", "removed_from_settings")),
    ),
    "partner_webhook_fanned_out_total": CounterSpec(
        "Events turned into deliveries to partner endpoints"
    ),
    "job_errors_total": CounterSpec(
        "Failed cycles of a background job, by job (`worker`) and cause",
        ("worker", "cause"),
        tuple((j, c) for j in JOBS for c in JOB_ERROR_CAUSES),
    ),
}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """Every metric the service keeps, in a registry of its own (tests build their own
    `Metrics()` and read it without the process's other counts)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        self.http_requests = Counter(
            p + "http_requests_total",
            "Requests answered, by route template, method and status",
            ("route", "method", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            p + "http_request_duration_seconds",
            "Request duration, from the first byte in to the last byte out",
            ("route", "method", "status"),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.bakkt_requests = Counter(
            p + "bakkt_requests_total",
            "Calls to Bakkt (retries included in one call), by operation and outcome",
            ("operation", "outcome"),
            registry=r,
        )
        self.bakkt_duration = Histogram(
            p + "bakkt_request_duration_seconds",
            "Duration of calls to Bakkt, retries and backoff included",
            ("operation",),
            buckets=BAKKT_BUCKETS,
            registry=r,
        )
        self.bakkt_token_refreshes = Counter(
            p + "bakkt_token_refreshes_total",
            "Bakkt access tokens fetched, by outcome",
            ("outcome",),
            registry=r,
        )
        self.bakkt_circuit_open = Gauge(
            p + "bakkt_circuit_open",
            "1 while calls to Bakkt fail fast (circuit open or waiting for its probe)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.bakkt_circuit_opened = Counter(
            p + "bakkt_circuit_opened_total",
            "Times the circuit breaker toward Bakkt opened",
            registry=r,
        )
        # Absent until the process has heard from Bakkt once (see `bakkt_reachable`).
        self._bakkt_up: Gauge | None = None
        self.idempotency_replays = Counter(
            p + "idempotency_replays_total",
            "Requests answered with the stored answer of their Idempotency-Key",
            registry=r,
        )
        self.idempotency_rejections = Counter(
            p + "idempotency_rejections_total",
            "Requests refused for their Idempotency-Key: 409 idempotency_request_in_progress, "
            "422 idempotency_key_reused",
            ("code",),
            registry=r,
        )
        self.webhooks_received = Counter(
            p + "webhooks_received_total",
            "Webhook deliveries, by outcome (the stored event's status, duplicate, rejected)",
            ("outcome",),
            registry=r,
        )
        self.webhooks_rejected = Counter(
            p + "webhooks_rejected_total",
            "Webhook deliveries refused before storing, by reason (the refusal's code)",
            ("reason",),
            registry=r,
        )
        self.build_info = Gauge(
            p + "build_info",
            "Always 1: the version and source revision this process runs",
            ("version", "revision"),
            registry=r,
            multiprocess_mode="max",
        )
        self._counters: dict[str, Counter] = {
            name: Counter(p + name, spec.help, spec.labels, registry=r)
            for name, spec in RECOVERY_COUNTERS.items()
        }
        for name, spec in RECOVERY_COUNTERS.items():
            for values in spec.known:
                self._counters[name].labels(*values)
        for operation in BAKKT_OPERATIONS:
            for outcome in BAKKT_OUTCOMES:
                self.bakkt_requests.labels(operation, outcome)
        for outcome in ("ok", "failed"):
            self.bakkt_token_refreshes.labels(outcome)
        for code in ("idempotency_request_in_progress", "idempotency_key_reused"):
            self.idempotency_rejections.labels(code)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks_received.labels(outcome)
        self.bakkt_circuit_open.set(0)

    # --- counted by name (the recovery jobs) -------------------------------------------------

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        if amount == 0:
            return
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    # --- what the service's parts report -----------------------------------------------------

    def known_webhook_rejections(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.webhooks_rejected.labels(code)

    def known_routes(self, routes: Iterable[tuple[str, str, Iterable[int]]]) -> None:
        """Request counters at 0 for each route, method and status it declares (and 500)."""
        for route, method, statuses in routes:
            for status in {*statuses, 500}:
                self.http_requests.labels(route, method, str(status))

    def bakkt_reachable(self, answered: bool) -> None:
        """Bakkt gave an HTTP answer other than a 5xx (True), or none (False)."""
        if self._bakkt_up is None:
            self._bakkt_up = Gauge(
                PREFIX + "bakkt_up",
                "1 when the latest call to Bakkt got an HTTP answer other than 5xx, else 0; "
                "0 while the circuit is open",
                registry=self.registry,
                multiprocess_mode="livemostrecent",
            )
        self._bakkt_up.set(1 if answered else 0)

    def circuit(self, is_open: bool) -> None:
        self.bakkt_circuit_open.set(1 if is_open else 0)
        if is_open:
            self.bakkt_circuit_opened.inc()
            if self._bakkt_up is not None:
                self._bakkt_up.set(0)

    def build(self, version: str, revision: str) -> None:
        self.build_info.labels(version, revision).set(1)

    # --- reading -----------------------------------------------------------------------------

    def value(self, name: str, **labels: str) -> float:
        """One counter series (`name` without the prefix, with or without `_total`); with no
        labels given, the sum over every series of it."""
        full = PREFIX + name.removesuffix("_total")
        total = 0.0
        for family in self.registry.collect():
            if family.name != full:
                continue
            for sample in family.samples:
                if sample.name not in (full + "_total", full):
                    continue
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def render(self, extra: Sequence[Collector] = ()) -> bytes:
        """The exposition text: this process's registry, or in multiprocess mode every
        worker's files added up; then `extra` collectors (the gauges read from the database)."""
        directory = multiprocess_dir()
        if directory is None:
            text = generate_latest(self.registry)
        else:
            _forget_dead_workers(directory)
            merged = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
            text = generate_latest(merged)
        if extra:
            once = CollectorRegistry(auto_describe=False)
            for collector in extra:
                once.register(collector)
            text += generate_latest(once)
        return text


class StaticCollector(Collector):
    """Gauges whose values were read already (by the scrape, from the database)."""

    def __init__(self, families: Sequence[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self.families


def gauge(name: str, help_text: str, value: float | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, help_text)
    if value is not None:
        family.add_metric([], value)
    return family


def labelled_gauge(
    name: str, help_text: str, label: str, values: Mapping[str, float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def prepare_multiprocess(workers: int) -> str | None:
    """Before `serve --workers N` starts its workers: a clean PROMETHEUS_MULTIPROC_DIR (made
    under the temp dir when unset and N > 1), inherited by every worker. Values left by an
    earlier run would otherwise be added to this one's."""
    directory = multiprocess_dir()
    if directory is None and workers <= 1:
        return None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="fiat-onramp-metrics-")
        os.environ[MULTIPROC_ENV] = directory
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.db"):
        leftover.unlink()
    return directory


def remove_multiprocess_dir(directory: str | None) -> None:
    if directory is not None and Path(directory).name.startswith("fiat-onramp-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)


def worker_exited(pid: int | None = None) -> None:
    """A worker is stopping: its `live*` gauges leave the sum (its counters stay)."""
    directory = multiprocess_dir()
    if directory is not None:
        prometheus_multiprocess.mark_process_dead(pid or os.getpid(), directory)  # type: ignore[no-untyped-call]


def _forget_dead_workers(directory: str) -> None:
    # A worker killed without its shutdown (SIGKILL, OOM) never marked itself dead; the scrape
    # does it for it, so its last circuit state does not linger in the `livemax`.
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                prometheus_multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            continue


METRICS = Metrics()
