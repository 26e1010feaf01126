"""Several worker processes on one listening socket, under a supervisor (``relaygate serve --workers N``).

The supervisor binds the socket once and every worker inherits it: connections wait in one kernel queue, so
a worker that stops (drained, or dead) loses none that it had not accepted yet; the others take them. It runs
the database migrations once, before any worker starts, and starts a worker that dies again (after a pause
that grows while it keeps dying young). SIGTERM or SIGINT is forwarded to every worker, which drains as a lone
server does (docs/server.md), and a second one is forwarded too; SIGHUP is forwarded (each worker reloads its
config). The supervisor exits 0 once every worker has stopped.

State a worker keeps in its own memory would be counted N times: with several workers the gateway refuses to
start where that would make a limit wrong (``check_workers``), and says what to configure.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from types import FrameType

from relaygate.config import Config, ConfigError
from relaygate.gateway import master_key
from relaygate.observability.shared import METRICS_DIR_ENV
from relaygate.routing.breaker import model_breaker

log = logging.getLogger("relaygate.workers")

WORKER_ENV = "RELAYGATE_WORKER"  # a worker's number (0…N-1), set by the supervisor
WORKERS_ENV = "RELAYGATE_WORKERS"  # how many there are (a reload checks the new config for that many)
BACKLOG = 2048
POLL = 0.2  # seconds between looks at the workers
YOUNG = 10.0  # a worker that dies within this many seconds of its start is restarted after a growing pause
MAX_PAUSE = 30.0
STOP_SLACK = 15.0  # beyond drain_timeout, what the workers get to cut the calls left and flush their logs


def shared_state_problems(config: Config) -> list[str]:
    """What this config counts in each process's memory, so that several workers would each count alone."""
    problems: list[str] = []
    if config.state.redis_url is None:
        if master_key(config):
            problems.append("auth: virtual keys' rpm, tpm, parallel and budget limits are counted in each "
                            "process without state.redis_url: every worker would grant a key its full limits")
        for mi, m in enumerate(config.models):
            if model_breaker(m).enabled:
                problems.append(f"models[{mi}].breaker: model {m.name!r} has circuit breakers, kept in each "
                                "process without state.redis_url: every worker would count failures alone")
    for mi, m in enumerate(config.models):
        for di, d in enumerate(m.deployments):
            limits = [n for n in ("rpm", "tpm", "max_parallel") if getattr(d, n) is not None]
            if limits:
                problems.append(f"models[{mi}].deployments[{di}]: {'/'.join(limits)} are counted in each "
                                "process (with Redis too): every worker would allow the whole limit")
    return problems


def check_workers(config: Config, workers: int) -> None:
    """Refuse several workers where per-process state would multiply a limit; a ConfigError says what to set."""
    if workers <= 1:
        return
    problems = shared_state_problems(config)
    if problems:
        fixes = ["run one worker"]
        if any(not p.startswith("models[") or ".breaker:" in p for p in problems):
            fixes.append("set state.redis_url (redis://host:6379/0) to share keys' limits, budgets and breakers")
        if any(".deployments[" in p for p in problems):
            fixes.append("remove the deployments' rpm/tpm/max_parallel limits")
        raise ConfigError([f"server.workers: {workers} workers, but {p}" for p in problems]
                          + [f"server.workers: {'; or '.join(fixes)}"])


def listen(host: str, port: int) -> socket.socket:
    """The one listening socket, inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def migrate_once(config: Config) -> None:
    """Apply the database migrations before any worker starts (each worker then finds the schema current). The
    database is always there: it holds the stored objects of the Responses API as well as keys and the log."""
    from relaygate.store.db import Database

    db = Database(config.database.url, config.database.pool_size)
    try:
        log.info("database ready (%s, schema version %d)", db.dialect, db.migrate())
    finally:
        db.close()


@dataclass
class Worker:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths: int = 0  # consecutive deaths soon after a start
    restart_at: float = field(default=0.0)


class Supervisor:
    """Starts ``workers`` gateway processes on ``sock``, keeps them running, stops them on a signal."""

    def __init__(self, sock: socket.socket, config_path: str | None, workers: int, drain_timeout: float) -> None:
        self.sock = sock
        self.command = [sys.executable, "-m", "relaygate", "serve", "--listen-fd", str(sock.fileno())]
        if config_path is not None:
            self.command += ["--config", os.path.abspath(config_path)]
        self.workers = [Worker(i) for i in range(workers)]
        self.stop_timeout = drain_timeout + STOP_SLACK
        self.stopping = 0.0  # when the first stop signal came (0: running)
        # where the workers leave their metrics for each other (observability/shared.py)
        self.metrics_dir = tempfile.mkdtemp(prefix="relaygate-metrics-")

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for w in self.workers:
                self._start(w)
            while not self._all_stopped():
                time.sleep(POLL)
                self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 0 if all(w.proc is None or w.proc.returncode == 0 for w in self.workers) else 1

    def _start(self, w: Worker) -> None:
        # a process group of its own: a terminal's Ctrl+C reaches the supervisor alone, which forwards it once
        w.proc = subprocess.Popen(self.command, pass_fds=(self.sock.fileno(),), process_group=0,
                                  env={**os.environ, WORKER_ENV: str(w.number), WORKERS_ENV: str(len(self.workers)),
                                       METRICS_DIR_ENV: self.metrics_dir})
        w.started = time.monotonic()
        log.info("worker %d started (pid %d)", w.number, w.proc.pid)

    def _watch(self) -> None:
        now = time.monotonic()
        if self.stopping and now - self.stopping > self.stop_timeout:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is None:
                    log.error("worker %d (pid %d) still running %g s after the stop signal: killed",
                              w.number, w.proc.pid, self.stop_timeout)
                    w.proc.kill()
                    w.proc.wait()
            return
        for w in self.workers:
            if self.stopping or w.proc is None:
                continue
            code = w.proc.poll()
            if code is None:
                continue
            if not w.restart_at:
                young = now - w.started < YOUNG
                w.deaths = w.deaths + 1 if young else 0
                pause = min(MAX_PAUSE, 0.5 * 2 ** (w.deaths - 1)) if young else 0.0
                log.error("worker %d (pid %d) exited with %s; starting another%s", w.number, w.proc.pid,
                          _exit_text(code), f" in {pause:g} s" if pause else "")
                w.restart_at = now + pause
            if now >= w.restart_at:
                w.restart_at = 0.0
                self._start(w)

    def _all_stopped(self) -> bool:
        return bool(self.stopping) and all(w.proc is None or w.proc.poll() is not None for w in self.workers)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                self.stopping = time.monotonic()
                self.sock.close()  # the workers hold the queue now; it closes with the last of them
                log.info("stopping: %d worker(s) drain", len(self.workers))
            forward = signal.SIGTERM
        else:
            forward = signal.SIGHUP
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(forward)


def _exit_text(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"


def supervise(config: Config, config_path: str | None, host: str, port: int, workers: int) -> int:
    """Bind, migrate, run ``workers`` workers until a stop signal; the exit code."""
    sock = listen(host, port)
    migrate_once(config)
    log.info("relaygate listening on http://%s:%d/v1 with %d workers", host, port, workers)
    return Supervisor(sock, config_path, workers, config.server.drain_timeout).run()
