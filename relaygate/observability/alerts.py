"""Alerts: rules over the gateway's own figures, checked in the background, sent to the configured channels.

Every ``alerts.interval`` seconds the evaluator takes a snapshot of the metrics' counts (calls, 5xx answers,
latency buckets, cost; per model and in all), keeps the snapshots its longest window needs, and judges each
rule on the difference to the snapshot one window ago, or on what it reads now (health scores, breakers, the
request log's spool, a budget's spend). A rule is judged per subject (a deployment, or the gateway): it fires
once, is sent again at most once per ``cooldown`` while it holds, and sends a resolve when it clears (only if
its firing was sent). Notifications go through a bounded queue to one sender task: a slow or dead channel
never holds up the evaluator, let alone a request; a full queue drops (counted, logged). Channel addresses
and secrets come only from the config and never appear in a notification or a log line.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import smtplib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import orjson

from relaygate.config.observability import AlertChannel, AlertRule, AlertsConfig
from relaygate.routing.breaker import OPEN
from relaygate.routing.health import DEGRADED_BELOW, deployment_score
from relaygate.upstream import Client, Timeouts

if TYPE_CHECKING:
    from relaygate.auth.keys import KeyStore
    from relaygate.limits.base import Limiter
    from relaygate.observability.metrics import Metrics
    from relaygate.routing.deployment import Deployment
    from relaygate.store.db import Database

log = logging.getLogger("relaygate.alerts")

RECENT = 100  # notifications /admin/alerts keeps
BudgetShare = Callable[[str, str], Awaitable[float | None]]  # (kind "key"|"team", id) -> percent of budget spent


@dataclass(slots=True)
class Totals:
    """Cumulative counts of one model (or all) at one moment."""

    calls: int = 0
    errors: int = 0
    cost_nano: int = 0
    latency: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    """The figures the windowed rules compare: per model (None: every call) and the request log's spool."""

    totals: dict[str | None, Totals]
    spool: int = 0


@dataclass(slots=True)
class State:
    """One rule's state for one subject."""

    firing: bool = False
    since: float | None = None  # wall-clock time it started firing
    last_sent: float | None = None  # monotonic time of the last firing notification sent
    notified: bool = False  # this firing was sent (so its resolve will be)
    value: float | None = None  # the figure last judged


class Alerts:
    """The rules of one gateway, their states, the channels and the two background tasks."""

    def __init__(self, config: AlertsConfig, metrics: Metrics, models: dict[str, list[Deployment]],
                 client: Client, budget_share: BudgetShare | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.models = models
        self.client = client  # the gateway's upstream client (its proxies apply)
        self.budget_share = budget_share
        self.states: dict[tuple[str, str], State] = {}
        self.history: collections.deque[tuple[float, Snapshot]] = collections.deque()
        self.keep = max((r.window for r in config.rules), default=0.0) + 2 * config.interval
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.queue: asyncio.Queue[tuple[AlertRule, dict[str, Any]]] = asyncio.Queue(config.queue_size)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.history.append((time.monotonic(), self.snapshot()))
        self.tasks = [asyncio.ensure_future(self._evaluate_forever()), asyncio.ensure_future(self._send_forever())]

    async def close(self) -> None:
        """Stop judging; give what is queued a few seconds to go out."""
        if not self.tasks:
            return
        evaluator, sender = self.tasks
        evaluator.cancel()
        try:
            await asyncio.wait_for(self.queue.join(), 5.0)
        except TimeoutError:
            log.warning("alerts: %d notifications not sent at shutdown", self.queue.qsize())
        sender.cancel()
        await asyncio.wait(self.tasks, timeout=2.0)
        self.tasks = []

    # -- judging -------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        totals: dict[str | None, Totals] = {}
        buckets = len(self.metrics.bounds) + 1
        for s in self.metrics.series.values():
            for name in (None, s.labels[0]):
                t = totals.get(name)
                if t is None:
                    t = totals[name] = Totals(latency=[0] * buckets)
                t.calls += s.count
                if s.labels[4].startswith("5"):  # the status: a 5xx is the gateway's or an upstream's failure
                    t.errors += s.count
                t.cost_nano += s.cost()
                for i, n in enumerate(s.latency):
                    t.latency[i] += n
        w = self.metrics.writer
        return Snapshot(totals, max(0, w.spooled - w.replayed) if w is not None else 0)

    async def _evaluate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                await self.evaluate()
            except Exception:  # a bug in one round must not end alerting
                log.exception("alerts: evaluation failed")

    async def evaluate(self) -> None:
        now = time.monotonic()
        current = self.snapshot()
        self.history.append((now, current))
        while len(self.history) > 2 and self.history[1][0] <= now - self.keep:
            self.history.popleft()
        for rule in self.config.rules:
            for subject, value, holds in await self._judge(rule, now, current):
                self._update(rule, subject, value, holds, now)

    def _since(self, now: float, window: float) -> Snapshot:
        """The snapshot closest to ``window`` seconds ago (the oldest kept, while there is no older one)."""
        chosen = self.history[0][1]
        for t, snap in self.history:
            if t > now - window:
                break
            chosen = snap
        return chosen

    async def _judge(self, rule: AlertRule, now: float, current: Snapshot) -> list[tuple[str, float | None, bool]]:
        """(subject, value, whether the rule holds) for each subject the rule covers."""
        kind = rule.kind
        if kind in ("deployment_unhealthy", "breaker_open"):
            out: list[tuple[str, float | None, bool]] = []
            for deps in self.models.values():
                for d in deps:
                    if rule.deployment is not None and d.name != rule.deployment:
                        continue
                    if kind == "breaker_open":
                        is_open = d.breaker is not None and d.breaker.state == OPEN
                        out.append((d.name, 1.0 if is_open else 0.0, is_open))
                    else:
                        score = float(deployment_score(d))
                        limit = rule.threshold if rule.threshold is not None else DEGRADED_BELOW
                        out.append((d.name, score, score < limit))
            return out
        if kind == "spool_growing":
            if self.metrics.writer is None:
                return []
            rows = current.spool
            grew = rows > (rule.threshold or 0) and rows > self._since(now, rule.window).spool
            return [("", float(rows), grew)]
        if kind == "budget":
            if self.budget_share is None:
                return []
            kind_id = ("key", rule.key) if rule.key is not None else ("team", rule.team or "")
            share = await self.budget_share(*kind_id)
            return [(f"{kind_id[0]}:{kind_id[1]}", share, share is not None and share >= (rule.threshold or 0))]
        now_t = current.totals.get(rule.model, Totals())
        then_t = self._since(now, rule.window).totals.get(rule.model, Totals())
        calls = now_t.calls - then_t.calls
        threshold = rule.threshold or 0.0
        if kind == "spend_per_hour":
            usd = (now_t.cost_nano - then_t.cost_nano) / 1e9 * 3600 / rule.window
            return [(rule.model or "", usd, usd >= threshold)]
        if calls < rule.min_calls:
            return [(rule.model or "", None, False)]  # too few calls to say anything
        if kind == "error_rate":
            rate = (now_t.errors - then_t.errors) / calls
            return [(rule.model or "", rate, rate >= threshold)]
        p95 = self._p95(now_t.latency, then_t.latency, calls)
        return [(rule.model or "", p95, p95 >= threshold)]

    def _p95(self, now_b: list[int], then_b: list[int], calls: int) -> float:
        """The upper bound of the bucket holding the 95th percentile of the window's latencies."""
        bounds = self.metrics.bounds
        target = 0.95 * calls
        acc = 0
        for i, bound in enumerate(bounds):
            acc += now_b[i] - (then_b[i] if then_b else 0)
            if acc >= target:
                return bound
        return bounds[-1] * 2  # above the largest bound: at least that

    def _update(self, rule: AlertRule, subject: str, value: float | None, holds: bool, now: float) -> None:
        st = self.states.get((rule.name, subject))
        if st is None:
            st = self.states[(rule.name, subject)] = State()
        st.value = value
        if holds:
            if not st.firing:
                st.firing, st.since = True, time.time()
            if st.last_sent is None or now - st.last_sent >= rule.cooldown:
                st.last_sent, st.notified = now, True
                self._notify(rule, subject, value, "firing")
        elif st.firing:
            st.firing = False
            if st.notified:
                st.notified = False
                self._notify(rule, subject, value, "resolved")

    # -- sending -------------------------------------------------------------------------------------------

    def _notify(self, rule: AlertRule, subject: str, value: float | None, status: str) -> None:
        note = {"alert": rule.name, "status": status, "severity": rule.severity, "kind": rule.kind,
                "subject": subject, "value": value, "threshold": rule.threshold, "window": rule.window,
                "at": time.time(), "summary": summary(rule, subject, value, status)}
        self.recent.append(note)
        try:
            self.queue.put_nowait((rule, note))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alerts: the notification queue is full; %s of %s dropped", status, rule.name)

    async def _send_forever(self) -> None:
        while True:
            rule, note = await self.queue.get()
            try:
                for name in rule.channels:
                    channel = self.config.channels[name]
                    try:
                        await self.send(channel, note)
                        self.sent += 1
                    except Exception as e:
                        self.failed += 1
                        log.warning("alerts: channel %r could not deliver %s of %s (%s)", name, note["status"],
                                    rule.name, type(e).__name__)
            finally:
                self.queue.task_done()

    async def send(self, channel: AlertChannel, note: dict[str, Any]) -> None:
        if channel.type == "log":
            (log.warning if note["status"] == "firing" else log.info)("ALERT %s", note["summary"])
            return
        if channel.type == "email":
            await asyncio.to_thread(_mail, channel, note)
            return
        assert channel.url is not None
        body = note if channel.type == "webhook" else {"text": note["summary"]}
        headers = {"content-type": "application/json",
                   **{k: v.get_secret_value() for k, v in channel.headers.items()}}
        resp = await self.client.request("POST", channel.url.get_secret_value(), headers=headers,
                                         data=orjson.dumps(body),
                                         timeouts=Timeouts(connect=channel.timeout, total=channel.timeout))
        try:
            await resp.read()
        finally:
            resp.release()
        if resp.status >= 300:  # a redirect too: never followed
            raise RuntimeError(f"HTTP {resp.status}")

    def view(self) -> dict[str, Any]:
        rules = []
        for r in self.config.rules:
            states = [{"subject": subject, "firing": st.firing, "since": st.since if st.firing else None,
                       "value": st.value} for (name, subject), st in self.states.items() if name == r.name]
            rules.append({**r.model_dump(exclude_none=True), "state": states,
                          "firing": any(s["firing"] for s in states)})
        return {"rules": rules, "recent": list(self.recent)[::-1], "sent": self.sent, "failed": self.failed,
                "dropped": self.dropped}


def summary(rule: AlertRule, subject: str, value: float | None, status: str) -> str:
    what = {"error_rate": "error rate", "p95_latency": "p95 latency (s)", "spend_per_hour": "spend (USD/h)",
            "deployment_unhealthy": "health score", "breaker_open": "breaker open", "spool_growing": "spooled rows",
            "budget": "budget used (%)"}[rule.kind]
    shown = "n/a" if value is None else f"{value:.4g}"
    about = f" of {subject}" if subject else ""
    limit = f" (threshold {rule.threshold:g})" if rule.threshold is not None else ""
    return f"[{status.upper()}] {rule.severity} {rule.name}: {what}{about} is {shown}{limit}"


def _mail(channel: AlertChannel, note: dict[str, Any]) -> None:
    assert channel.host is not None and channel.sender is not None
    msg = EmailMessage()
    msg["Subject"] = f"[relaygate] {note['summary']}"
    msg["From"] = channel.sender
    msg["To"] = ", ".join(channel.to)
    msg.set_content(note["summary"] + "\n\n" + orjson.dumps(note, option=orjson.OPT_INDENT_2).decode())
    with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout) as smtp:
        if channel.starttls:
            smtp.starttls()
        if channel.username and channel.password is not None:
            smtp.login(channel.username, channel.password.get_secret_value())
        smtp.send_message(msg)


def budget_reader(db: Database, store: KeyStore, limiter: Limiter | None) -> BudgetShare:
    """The percent of its budget a key or team spent this period: the limiter's figure where it holds one,
    else the request log's (as the admin API reports it); None without a budget."""
    from relaygate.auth.keys import spent_since
    from relaygate.core.errors import NotFound
    from relaygate.core.pricing import NANO
    from relaygate.limits.periods import period

    async def share(kind: str, oid: str) -> float | None:
        try:
            view = await (db.run(store.get_key, oid) if kind == "key" else db.run(store.get_owner, kind, oid))
        except NotFound:
            return None
        budget = view.get("budget_usd")
        if budget is None or budget <= 0:
            return None
        pid, start, _ = period(view.get("budget_period") or "total", time.time())
        scope = f"{kind}:{oid}"
        known = (await limiter.known_spend([(scope, pid)]))[0] if limiter is not None else None
        spent = known if known is not None else await db.on_engine(spent_since, scope, start)
        return float(spent) / (float(budget) * NANO) * 100

    return share
