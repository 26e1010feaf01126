"""Metrics of several workers on one port (``relaygate serve --workers N``).

A scrape reaches whichever worker accepts the connection, so each worker alone could only show its own
counts, a different worker's each time. Instead every worker writes its exposition to a directory the
supervisor made (``RELAYGATE_METRICS_DIR``) once a second, and the worker that answers a scrape serves all of
them: its own fresh, the others' as last written, each sample labelled with its ``worker``. Prometheus adds
them up (``sum without (worker)``); a restarted worker's counters start again from 0, which ``rate()`` takes as
the reset it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
from collections.abc import Iterator
from typing import Any

from relaygate.observability.metrics import Metrics

log = logging.getLogger("relaygate.metrics")

METRICS_DIR_ENV = "RELAYGATE_METRICS_DIR"
WRITE_INTERVAL = 1.0  # seconds between a worker's writes of its exposition
STALE = 60.0  # a file not written for this long is a worker that is gone: left out


class SharedMetrics:
    """One worker's part: write its own exposition, answer a scrape with every worker's."""

    def __init__(self, metrics: Metrics, directory: str, worker: str) -> None:
        self.metrics = metrics
        self.directory = directory
        self.worker = worker
        self.path = os.path.join(directory, f"worker-{worker}.prom")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._write_forever())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=2.0)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def _write_forever(self) -> None:
        while True:
            try:
                self.write()
            except OSError as e:  # a full or removed directory: the other workers' scrapes lack this one
                log.warning("metrics: cannot write %s (%s)", self.path, e)
            await asyncio.sleep(WRITE_INTERVAL)

    def write(self) -> None:
        from prometheus_client.exposition import generate_latest

        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(generate_latest(self.metrics.registry()))
        os.replace(tmp, self.path)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder, generate_latest
        from prometheus_client.registry import CollectorRegistry

        texts = {self.worker: generate_latest(self.metrics.registry()).decode()}
        texts.update(self._others())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(texts))
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def _others(self) -> dict[str, str]:
        import time

        out = {}
        now = time.time()
        for path in glob.glob(os.path.join(self.directory, "worker-*.prom")):
            worker = os.path.basename(path)[len("worker-"):-len(".prom")]
            if worker == self.worker:
                continue
            try:
                if now - os.path.getmtime(path) > STALE:
                    continue
                with open(path, encoding="utf-8") as f:
                    out[worker] = f.read()
            except OSError:  # replaced or removed meanwhile
                continue
        return out


class _Merged:
    """Every worker's families, merged by name, each sample labelled with its worker."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.parser import text_string_to_metric_families
        from prometheus_client.samples import Sample

        families: dict[str, Metric] = {}
        for worker, text in sorted(self.texts.items()):
            for f in text_string_to_metric_families(text):
                merged = families.get(f.name)
                if merged is None:
                    merged = families[f.name] = Metric(f.name, f.documentation, f.type, f.unit)
                merged.samples += [Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
                                   for s in f.samples]
        return iter(families.values())
