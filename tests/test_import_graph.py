"""What a gateway imports is what its config uses: the zero-config gateway (the ``demo`` model, the request log
in SQLite) serves without the emulators of relaygate/testing and without the parts other configs need: no
SQLAlchemy either (its SQLite file is migrated and written through plain sqlite3; keys, the admin API, stored
objects and PostgreSQL load it on first use)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from relaygate.testing.base import free_port

REPO = Path(__file__).resolve().parents[1]
# the emulators, and what only other configs use: a YAML file, SQLAlchemy (keys, admin, stored objects,
# PostgreSQL), uploads, websockets
NEVER_FOR_THE_DEFAULT = ("relaygate.testing", "yaml", "sqlalchemy", "python_multipart", "websockets")


def modules_of_a_serving_gateway(tmp_path: Path) -> set[str]:
    """The modules of a ``relaygate serve`` process (no --config) that answered a demo chat: listed by the
    process itself as it exits."""
    listing = tmp_path / "modules.txt"
    port = free_port()
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sorted(sys.modules))))\n"
            "from relaygate.cli.main import main\n"
            f"sys.exit(main(['serve', '--port', '{port}']))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
        deadline = time.monotonic() + 60
        status = None
        while status != 200 and time.monotonic() < deadline and proc.poll() is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
                status = conn.getresponse().status
            except OSError:
                time.sleep(0.05)
            finally:
                conn.close()
        assert status == 200, f"no answer from the demo model: {status}"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return set(listing.read_text().split())


def test_the_default_config_imports_no_emulator_and_nothing_it_does_not_use(tmp_path: Path) -> None:
    modules = modules_of_a_serving_gateway(tmp_path)
    assert "relaygate.providers.demo" in modules and "relaygate.requestlog.writer" in modules  # it did serve
    unexpected = sorted(m for m in modules if m.startswith(NEVER_FOR_THE_DEFAULT))
    assert unexpected == []
