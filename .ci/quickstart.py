#!/usr/bin/env python3
"""Run the README's runtime quick start as a new user would, and fail unless the gateway it starts answers.

The first command block under "## Quick start" runs verbatim (plus `--port N`, a free port) in a copy of the
work tree without .venv or anything ignored, so it creates its venv with the pip that `python3 -m venv` brings.
The gateway must then give 200 on /health, a chat completion from the `demo` model and the dashboard's files (package
data of the wheel). The second block must
be `./scripts/test`, the command .ci/run runs next. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_AND_START = 300.0  # seconds; a cached install takes ~20 s, a cold one ~1 min


def quick_start_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def tree_copy(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files, as a fresh clone plus local edits would have them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(url: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_healthy(base: str, server: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the quick start exited with {server.returncode} before the gateway answered")
        try:
            status, body = request(f"{base}/health")
        except OSError:  # not listening yet
            time.sleep(0.5)
            continue
        if status == 200:
            return
        raise SystemExit(f"/health answered {status}: {body[:300]!r}")
    raise SystemExit(f"no answer on {base}/health within {INSTALL_AND_START:.0f} s")


def main() -> int:
    blocks = quick_start_blocks()
    if len(blocks) < 2 or not blocks[0].endswith("relaygate serve") or blocks[1] != "./scripts/test":
        raise SystemExit("README quick start: expected a block ending in `relaygate serve`, then `./scripts/test`")
    port = free_port()
    command = f"{blocks[0]} --port {port}"
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    with tempfile.TemporaryDirectory(prefix="relaygate-quickstart-") as tmp:
        tree_copy(Path(tmp))
        log = Path(tmp) / "quickstart.log"
        started = time.monotonic()
        with log.open("wb") as out:
            # A session of its own, so that the shell, pip and the gateway it starts end together.
            server = subprocess.Popen(["bash", "-c", command], cwd=tmp, env=env,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(base, server, started + INSTALL_AND_START)
            healthy = time.monotonic() - started
            status, body = request(f"{base}/v1/chat/completions",
                                   {"model": "demo", "messages": [{"role": "user", "content": "Hello!"}]})
            content = json.loads(body)["choices"][0]["message"]["content"] if status == 200 else None
            if not content:
                raise SystemExit(f"demo chat answered {status}: {body[:300]!r}")
            for path in ("/dashboard", "/dashboard/app.js", "/dashboard/vendor/uplot.iife.min.js"):
                status, body = request(base + path)  # the dashboard's files are package data in the wheel
                if status != 200 or not body:
                    raise SystemExit(f"{path} answered {status} from the installed gateway: {body[:300]!r}")
        except BaseException:
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            stop(server)
    print(f"runtime quick start: installed, built and healthy in {healthy:.1f} s; /health 200, demo chat 200, "
          "dashboard files 200")
    return 0


def stop(server: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
