"""Prometheus metrics of one gateway.

The request path only counts: each finished call adds to one record of plain numbers, found by one dict
lookup on (deployment or model, route, status, error class). The records become metric families only when
``/metrics`` is scraped, where ``prometheus_client`` renders them (its text or OpenMetrics format), together
with what is read at that moment: breakers, health scores, the request log's queue. Nothing here is shared
between gateways (a registry each, no global one), and every label value comes from the config or a bounded
set (statuses, error classes, routes): never a request id, a key, or a model name a client made up.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from time import monotonic
from typing import TYPE_CHECKING, Any

from relaygate.core.call import Call, Reply, Route
from relaygate.core.errors import GatewayError
from relaygate.core.pricing import NANO
from relaygate.routing.breaker import STATE_NAMES
from relaygate.routing.health import deployment_score
from relaygate.server.http import error_fields

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from relaygate.cache.layer import CacheStats
    from relaygate.catalog.prices import Price
    from relaygate.config import Config
    from relaygate.core.call import Usage
    from relaygate.requestlog.writer import RequestLogWriter
    from relaygate.routing.deployment import Deployment

OTHER = "other"  # the label value of anything not named in the config (a wildcard model, an undeclared key)
# the limit refusals worth telling apart, by the refusal's error code (before any upstream attempt)
REFUSALS = {"rate_limit_exceeded": "rate", "parallel_limit_exceeded": "parallel", "budget_unavailable": "budget_unavailable",
            "deployment_capacity": "deployment_capacity"}
# routes of requests refused before they became calls (bad JSON, a missing key), by path
REFUSED_ROUTES = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings", "/v1/messages": "messages",
                  "/v1/messages/count_tokens": "count_tokens", "/v1/audio/transcriptions": "transcriptions",
                  "/v1/audio/translations": "translations", "/v1/audio/speech": "speech"}


class Series:
    """Everything counted for one (model, deployment, provider, route, status, error) label set."""

    __slots__ = ("labels", "latency", "latency_sum", "ttft", "ttft_sum", "input_tokens", "output_tokens",
                 "cost_nano", "cache_hits", "retries", "price", "apart_input", "apart_output")

    def __init__(self, labels: tuple[str, ...], buckets: int, price: Price | None = None) -> None:
        self.labels = labels  # model, deployment, provider, route, status, error
        self.latency = [0] * (buckets + 1)  # per bucket, not cumulative (the last one: above every bound)
        self.latency_sum = 0.0
        self.ttft = [0] * (buckets + 1)
        self.ttft_sum = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        # the per-token price of every call counted here, when it is one (a deployment's that is not a
        # wildcard, no per-key counts): the tokens are priced when the cost is read, but those of the calls
        # priced one by one (``cost_nano``; cached tokens, audio, a failed call's meter), counted apart
        self.price = price
        self.apart_input = 0
        self.apart_output = 0
        self.cost_nano = 0
        self.cache_hits = 0
        self.retries = 0

    @property
    def count(self) -> int:
        """The calls counted (each has one latency)."""
        return sum(self.latency)

    def cost(self) -> int:
        """What the calls cost, in nano-dollars: those priced one by one, and the other calls' tokens priced
        now (their sum priced at once rather than each call's: it differs by the rounding of each)."""
        price = self.price
        if price is None:
            return self.cost_nano
        return self.cost_nano + round(((self.input_tokens - self.apart_input) * price.input
                                       + (self.output_tokens - self.apart_output) * price.output) * NANO)


class Metrics:
    """The counts of one gateway, and its registry for ``/metrics``."""

    def __init__(self, config: Config, models: dict[str, list[Deployment]],
                 cost: Callable[[Call, Reply | None], int],
                 price: Callable[[Deployment, str], Price] | None = None) -> None:
        self.bounds = list(config.metrics.latency_buckets)
        self.models = models
        self.cost = cost  # a call's cost (computed once per call, shared with the log and the limits)
        self.price = price  # a deployment's per-token price: the series' cost read at scrapes
        self.names = frozenset(m.name for m in config.models)
        self.series: dict[tuple[Any, ...], Series] = {}
        self.started = 0  # calls that entered the pipeline (in flight: those not finished yet)
        self.finished = 0
        self.refusals: dict[tuple[str, str], int] = {}  # (model, reason) -> count
        self.fallbacks: dict[tuple[str, str], int] = {}  # (model asked, fallback model) -> count
        self.faults: dict[tuple[str, str], int] = {}  # (deployment, fault kind) -> injected count
        # opt-in per key and team, for configured keys only
        self.key_teams: dict[str, str] | None = None
        if config.metrics.key_labels:
            from relaygate.auth.keys import config_key_id

            self.key_teams = {config_key_id(k.id): k.team_id or "" for k in config.auth.keys}
        self.per_key: dict[tuple[str, str], list[int]] = {}  # (key, team) -> [requests, cost_nano]
        self.writer: RequestLogWriter | None = None
        self.cache: CacheStats | None = None  # the response cache's counts, when a model has a cache
        self._registry: CollectorRegistry | None = None

    @property
    def in_flight(self) -> int:
        """Calls in the pipeline now."""
        return self.started - self.finished

    # -- the request path ---------------------------------------------------------------------------------

    def model_label(self, call: Call) -> str:
        """The configured model the call asked for; ``other`` for a name only a wildcard matched."""
        if call.deployments:
            return call.deployments[0].model_name
        model = call.model
        return model if model in self.names else OTHER if model else ""

    def record(self, call: Call, reply: Reply | None, error: BaseException | None) -> None:
        """Count a finished call (its reply delivered, or its failure), which leaves the calls in flight."""
        self.finished += 1
        latency = monotonic() - call.started
        if error is None:
            status = reply.status if reply is not None else 200
            kind = ""
        else:
            code, k, _ = error_fields(error)
            status, kind = code or 500, k or ""
        s = self.series.get((call.deployment or self.model_label(call), call.route, status, kind))
        if s is None:
            s = self._series(call, status, kind)
        s.latency[bisect_left(self.bounds, latency)] += 1
        s.latency_sum += latency
        if reply is not None:
            if call.stream:
                first = reply.first_byte_at
                if first is not None:
                    ttft = first - call.started
                    s.ttft[bisect_left(self.bounds, ttft)] += 1
                    s.ttft_sum += ttft
            usage = reply.usage
            if usage is None or not usage.known:
                s.cost_nano += self.cost(call, reply)  # nothing, or what a meter reserved
            else:
                s.input_tokens += usage.prompt_tokens
                s.output_tokens += usage.completion_tokens
                if s.price is None or (usage.cached_tokens or usage.cache_write_tokens or usage.audio_seconds
                                       or usage.characters):
                    self._apart(call, reply, s, usage)  # else its tokens are priced when the cost is read
        if call.attempts != 1 or call.fallbacks:
            self._unusual(call, s, error)
        if self.key_teams is not None and call.key is not None:
            self._per_key(call, self.cost(call, reply))

    def _apart(self, call: Call, reply: Reply, s: Series, usage: Usage) -> None:
        """A call priced on its own (its cost is not its tokens times the series' price)."""
        s.cost_nano += self.cost(call, reply)
        if s.price is not None:
            s.apart_input += usage.prompt_tokens
            s.apart_output += usage.completion_tokens

    def _series(self, call: Call, status: int, kind: str) -> Series:
        """The record of a label set first counted now."""
        dep = call.deployment
        if dep is None:
            labels: tuple[str, ...] = (self.model_label(call), "", "")
            price = None
        else:
            labels = (dep.model_name, dep.name, dep.provider_type)
            # a wildcard deployment's price depends on the model each call asks for, a passthrough call has
            # its meter, the per-key counts need each call's cost: priced per call
            price = (self.price(dep, call.model) if self.price is not None and self.key_teams is None
                     and dep.config.model != "*" and call.route != Route.PASSTHROUGH else None)
        s = self.series[(dep or labels[0], call.route, status, kind)] = Series(
            (*labels, str(call.route), str(status), kind), len(self.bounds), price)
        return s

    def _unusual(self, call: Call, s: Series, error: BaseException | None) -> None:
        """What most calls (one attempt, no fallback) have nothing of: a cache hit, retries, fallbacks, a
        refusal before any attempt."""
        if call.cache_hit:
            s.cache_hits += 1
        if call.attempts > 1:
            s.retries += call.attempts - 1
        if call.fallbacks:
            self._fell_back(call)
        if error is not None and call.attempts == 0 and isinstance(error, GatewayError):
            self._refused(call, error)

    def record_refused(self, path: str, error: GatewayError, started: float) -> None:
        """Count a request refused before it became a call (a body that is not JSON, a missing key)."""
        key = ("", REFUSED_ROUTES.get(path, OTHER), error.status, error.kind)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series(("", "", "", key[1], str(error.status), error.kind), len(self.bounds))
        latency = monotonic() - started
        s.latency[bisect_left(self.bounds, latency)] += 1
        s.latency_sum += latency

    def fault(self, dep: Deployment, kind: str) -> None:
        """Count a fault the chaos rules injected into a call to ``dep``."""
        k = (dep.name, kind)
        self.faults[k] = self.faults.get(k, 0) + 1

    def _fell_back(self, call: Call) -> None:
        asked = call.model if call.model in self.names else OTHER
        for to in call.fallbacks:
            k = (asked, to)
            self.fallbacks[k] = self.fallbacks.get(k, 0) + 1

    def _refused(self, call: Call, error: GatewayError) -> None:
        if error.kind == "budget":
            reason: str | None = "budget"
        elif error.kind == "rate_limited" or error.code == "budget_unavailable":
            reason = REFUSALS.get(error.code or "")
        else:
            reason = None
        if reason is None:
            return
        k = (self.model_label(call), reason)
        self.refusals[k] = self.refusals.get(k, 0) + 1

    def _per_key(self, call: Call, cost: int) -> None:
        assert self.key_teams is not None and call.key is not None
        team = self.key_teams.get(call.key.id)
        k = (OTHER, OTHER) if team is None else (call.key.id, team)
        row = self.per_key.get(k)
        if row is None:
            row = self.per_key[k] = [0, 0]
        row[0] += 1
        row[1] += cost

    # -- the scrape ---------------------------------------------------------------------------------------

    def registry(self) -> CollectorRegistry:
        """This gateway's registry (built at the first scrape): its own families and the process's."""
        if self._registry is None:
            from prometheus_client.process_collector import ProcessCollector
            from prometheus_client.registry import CollectorRegistry

            reg = CollectorRegistry(auto_describe=False)
            reg.register(_Collector(self))
            ProcessCollector(registry=reg)
            self._registry = reg
        return self._registry

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and its content type (OpenMetrics when the scraper asks for it)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry()), content_type

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        series = list(self.series.values())
        call_labels = ["model", "deployment", "provider", "route", "status", "error"]
        requests = CounterMetricFamily("relaygate_requests", "Requests finished, by outcome", labels=call_labels)
        for s in series:
            requests.add_metric(list(s.labels), s.count)
        yield requests

        per_dep: dict[tuple[str, ...], list[Series]] = {}
        for s in series:
            per_dep.setdefault(s.labels[:4], []).append(s)
        dep_labels = call_labels[:4]
        latency = HistogramMetricFamily("relaygate_request_duration_seconds",
                                        "Time from the request to the end of its answer", labels=dep_labels)
        ttft = HistogramMetricFamily("relaygate_time_to_first_token_seconds",
                                     "Streams: time from the request to the first upstream byte", labels=dep_labels)
        tokens_in = CounterMetricFamily("relaygate_input_tokens", "Prompt tokens upstreams reported",
                                        labels=dep_labels)
        tokens_out = CounterMetricFamily("relaygate_output_tokens", "Completion tokens upstreams reported",
                                         labels=dep_labels)
        cost = CounterMetricFamily("relaygate_cost_usd", "What the calls cost, in USD", labels=dep_labels)
        hits = CounterMetricFamily("relaygate_cache_hits", "Calls answered from the response cache",
                                   labels=dep_labels)
        retries = CounterMetricFamily("relaygate_retries", "Upstream attempts beyond each call's first",
                                      labels=dep_labels)
        for labels, group in per_dep.items():
            values = list(labels)
            latency.add_metric(values, self._buckets(s.latency for s in group), sum(s.latency_sum for s in group))
            if any(any(s.ttft) for s in group):
                ttft.add_metric(values, self._buckets(s.ttft for s in group), sum(s.ttft_sum for s in group))
            tokens_in.add_metric(values, sum(s.input_tokens for s in group))
            tokens_out.add_metric(values, sum(s.output_tokens for s in group))
            cost.add_metric(values, sum(s.cost() for s in group) / NANO)
            hits.add_metric(values, sum(s.cache_hits for s in group))
            retries.add_metric(values, sum(s.retries for s in group))
        yield from (latency, ttft, tokens_in, tokens_out, cost, hits, retries)

        yield _counter("relaygate_fallbacks", "Calls that moved on to a fallback model", ["model", "fallback"],
                       self.fallbacks.items())
        yield _counter("relaygate_limit_refusals", "Calls refused by a rate limit, parallel limit or budget",
                       ["model", "reason"], self.refusals.items())
        yield _counter("relaygate_faults_injected", "Faults the chaos rules injected", ["deployment", "fault"],
                       self.faults.items())
        if self.key_teams is not None:
            yield _counter("relaygate_key_requests", "Requests per configured key", ["key", "team"],
                           ((k, v[0]) for k, v in self.per_key.items()))
            key_cost = CounterMetricFamily("relaygate_key_cost_usd", "Spend per configured key, in USD",
                                           labels=["key", "team"])
            for k, v in self.per_key.items():
                key_cost.add_metric(list(k), v[1] / NANO)
            yield key_cost
        yield GaugeMetricFamily("relaygate_in_flight", "Calls in the pipeline now", value=self.in_flight)
        yield from self._deployment_families()
        if self.writer is not None:
            yield from _writer_families(self.writer)
        if self.cache is not None:
            yield from self._cache_families(self.cache)

    def _cache_families(self, stats: CacheStats) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        # hits are counted per call above (relaygate_cache_hits_total, with the call's labels)
        yield CounterMetricFamily("relaygate_cache_misses", "Cache lookups that found no answer to reuse",
                                  value=stats.misses)
        saved: dict[str, int] = {}
        for model, nano in stats.saved_nano.items():  # a shared (Redis) entry may name another config's model
            label = model if model in self.names else OTHER
            saved[label] = saved.get(label, 0) + nano
        family = CounterMetricFamily("relaygate_cache_saved_usd", "What the cache hits would have cost upstream, "
                                     "in USD", labels=["model"])
        for model, nano in sorted(saved.items()):
            family.add_metric([model], nano / NANO)
        yield family

    def _buckets(self, counts: Iterable[list[int]]) -> list[tuple[str, float]]:
        """Cumulative ``le`` buckets of the summed per-bucket counts."""
        total = [0] * (len(self.bounds) + 1)
        for c in counts:
            for i, n in enumerate(c):
                total[i] += n
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], total, strict=True):
            acc += n
            out.append((bound, acc))
        return out

    def _deployment_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["model", "deployment", "provider"]
        score = GaugeMetricFamily("relaygate_deployment_health_score",
                                  "0-100: success rate x latency against its baseline x breaker x health check",
                                  labels=labels)
        breaker = GaugeMetricFamily("relaygate_deployment_breaker_state",
                                    "1 for the state the deployment's circuit breaker is in",
                                    labels=[*labels, "state"])
        flight = GaugeMetricFamily("relaygate_deployment_in_flight", "Upstream calls in flight",
                                   labels=labels)
        healthy = GaugeMetricFamily("relaygate_deployment_up",
                                    "1 unless the deployment's active health checks fail", labels=labels)
        for deps in self.models.values():
            for d in deps:
                values = [d.model_name, d.name, d.provider_type]
                score.add_metric(values, deployment_score(d))
                if d.breaker is not None:
                    for i, name in enumerate(STATE_NAMES):
                        breaker.add_metric([*values, name], 1 if d.breaker.state == i else 0)
                flight.add_metric(values, d.stats.in_flight)
                healthy.add_metric(values, 1 if d.stats.healthy else 0)
        yield from (score, breaker, flight, healthy)


def _counter(name: str, doc: str, labels: list[str], items: Iterable[tuple[tuple[str, ...], int]]) -> Any:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, doc, labels=labels)
    for k, v in items:
        family.add_metric(list(k), v)
    return family


def _writer_families(w: RequestLogWriter) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily("relaygate_request_log_queue_depth", "Log rows waiting for the writer",
                            value=len(w.queue))
    yield GaugeMetricFamily("relaygate_request_log_spool_rows",
                            "Log rows spooled to disk and not yet replayed into the database",
                            value=max(0, w.spooled - w.replayed))
    yield GaugeMetricFamily("relaygate_request_log_database_up", "1 while the log database takes writes",
                            value=1 if w.db_ok else 0)
    for name, doc, value in (("spooled", "Log rows spooled to disk", w.spooled),
                             ("written", "Log rows written to the database", w.written),
                             ("dead", "Log rows the database refused (dead-letter file)", w.dead),
                             ("lost", "Log rows neither written nor spooled", w.lost)):
        yield CounterMetricFamily(f"relaygate_request_log_{name}_rows", doc, value=value)


class _Collector:
    """The registry's view of a ``Metrics``: families built at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.families()
