"""``relaygate serve`` in a process of its own, for what only a real process shows: signals, exit codes, an
open-file limit."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from relaygate.testing.base import free_port

REPO = Path(__file__).resolve().parents[1]


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.workers_seen: set[int] = set()
        self.config_of: dict[int, str] = {}  # the config hash each pid answered with last

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        """``GET /health`` answers (on a fresh connection); the answering process's pid is noted."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
        except OSError:
            return False
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return False
        answer_json = json.loads(body)
        self.workers_seen.add(answer_json["pid"])
        self.config_of[answer_json["pid"]] = answer_json["config"]["hash"]
        return True

    def accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False


@contextmanager
def gateway_process(tmp_path: Path, config: dict[str, Any], open_files: int | None = None,
                    args: tuple[str, ...] = ()) -> Iterator[GatewayProcess]:
    """The gateway serving ``config`` (its request log in a SQLite file under ``tmp_path`` unless the config
    names a database), healthy; killed at the end (its process group: workers too) if it is still running."""
    port = free_port()
    cfg = tmp_path / "gateway.yaml"
    config = {"database": {"url": f"sqlite:///{tmp_path}/gateway.db"}, **config}
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / "gateway.log"

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "relaygate", "serve", "--config", str(cfg), "--port",
                                 str(port), *args], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_files)
    gw = GatewayProcess(proc, port, log)
    try:
        deadline = time.monotonic() + 45  # several processes starting on a loaded 2-core machine
        while not gw.healthy():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not start:\n{gw.output()}")
            time.sleep(0.05)
        yield gw
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in gw.workers_seen:  # a supervisor's workers, should it have been killed before them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
