"""Voice scenarios: the first byte of speech at c=1, and the gateway's memory during a 25 MB upload.

relaygate and LiteLLM serve these routes (direct is the reference); the bare proxy only forwards chat,
so its column stays empty.
"""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from harness import Ctx, Load, Target, run_load

UPLOAD_BYTES = 25 * 1024 * 1024
UPLOADS = 3
BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


def _base(ctx: Ctx, target: Target) -> str | None:
    if target.kind == "direct":
        return ctx.upstream + "/v1"
    if target.kind in ("gateway", "other"):
        return f"http://127.0.0.1:{target.port}/v1"
    return None


def speech_first_byte(ctx: Ctx, target: Target) -> dict[str, float]:
    """One client, back to back: time to the first audio bytes, and to the whole answer."""
    base = _base(ctx, target)
    if base is None:
        return {}
    use_wrk, ctx.use_wrk = ctx.use_wrk, False  # wrk cannot time a first byte; loadgen.py does
    try:
        run_load(ctx, base + "/audio/speech", Load("speech.json", conns=1, seconds=1), 1)
        return run_load(ctx, base + "/audio/speech", Load("speech.json", conns=1, seconds=4), 4 * ctx.scale)
    finally:
        ctx.use_wrk = use_wrk


def _upload_body(ctx: Ctx) -> Path:
    """A multipart body with a 25 MB WAV-named file after the model field, as the openai SDK sends it."""
    path = ctx.run_dir / "upload-25mb.multipart"
    if not path.exists():
        with open(path, "wb") as f:
            f.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbench-whisper\r\n'
                    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                    "Content-Type: audio/wav\r\n\r\n".encode())
            block = os.urandom(1 << 20)
            for _ in range(UPLOAD_BYTES >> 20):
                f.write(block)
            f.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return path


def _reset_peak(pids: list[int]) -> None:
    for pid in pids:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def upload_memory(ctx: Ctx, target: Target) -> dict[str, float]:
    """POST a 25 MB transcription upload; the rise of the gateway's peak RSS above its RSS before uploads."""
    base = _base(ctx, target)
    if base is None:
        return {}
    body = _upload_body(ctx)
    url = urlsplit(base + "/audio/transcriptions")
    rises, times, errors = [], [], 0
    for _ in range(UPLOADS):
        before = 0.0
        if target.proc is not None:
            # against the RSS before this target's first upload: memory an allocator keeps after one upload
            # and reuses for the next still counts (a per-upload baseline would hide it from round 2 on)
            before = target.results.setdefault("upload25_baseline_mib", target.proc.memory_mib()[0])
            _reset_peak(target.proc.tree())
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60, blocksize=1 << 20)
        t0 = time.perf_counter()
        with open(body, "rb") as f:
            conn.request("POST", url.path, body=f, headers={
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(body.stat().st_size),
                "Authorization": "Bearer sk-bench-5f0c2a9e71d43b86a1e07c9d2f4b6e38"})
            resp = conn.getresponse()
            resp.read()
        times.append(time.perf_counter() - t0)
        conn.close()
        errors += resp.status != 200
        if target.proc is not None:
            rises.append(target.proc.memory_mib()[1] - before)
    out = {"upload_s": sorted(times)[len(times) // 2], "errors": float(errors)}
    if rises:
        out["rss_rise_mib"] = max(rises)
    return out
