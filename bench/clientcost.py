"""Instructions per request of an upstream HTTP client alone: aiohttp's session against relaygate's own.

A process that only sends chat requests to the fake upstream (nginx) and reads the answers, run under
callgrind; the instructions it executes during ``-n`` requests from ``-c`` concurrent callers (after a
warm-up) are divided by ``-n``. The driving loop is the same for both clients, so the difference is theirs.

    python bench/clientcost.py                # both clients, non-streaming and streaming
    python bench/clientcost.py -n 3000 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, REPO_DIR, Ctx, free_port, start_upstream  # noqa: E402
from instructions import counted  # noqa: E402

HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


async def drive(kind: str, url: str, body: bytes, n: int, clients: int) -> None:
    """Warm up, say "ready", wait for a line; run ``n`` requests, say "done", wait for a line."""
    import uvloop  # noqa: F401  (the loop is set by the caller)

    if kind == "aiohttp":
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def one() -> None:
            async with session.post(url, data=body, headers=HEADERS) as r:
                async for _ in r.content.iter_any():
                    pass
        close = session.close
    elif kind == "raw":  # the floor under any client: one keep-alive socket per caller, no parsing at all
        loop = asyncio.get_running_loop()
        host, port = url.split("/")[2].split(":")
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer sk-bench\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
        idle: list[RawConn] = []

        async def one() -> None:
            conn = idle.pop() if idle else (await loop.create_connection(lambda: RawConn(loop), host, int(port)))[1]
            conn.done = loop.create_future()
            conn.transport.write(head)
            await conn.done
            idle.append(conn)

        async def close() -> None:
            for c in idle:
                c.transport.close()
    else:
        from relaygate.upstream import Client, EncodedHeaders
        client = Client()
        headers = EncodedHeaders(HEADERS)  # as a provider keeps its deployment's headers

        async def one() -> None:
            r = await client.request("POST", url, headers=headers, data=body)
            async for _ in r:
                pass
        close = client.close

    async def run(count: int) -> None:
        left = count

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()
        await asyncio.gather(*(caller() for _ in range(clients)))

    loop = asyncio.get_running_loop()
    await run(200)
    for _ in range(2):
        print("ready" if _ == 0 else "done", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        if _ == 0:
            await run(n)
    await close()


class RawConn(asyncio.Protocol):
    """Knows the fake upstream's answers end with ``}`` (JSON) or ``[DONE]`` plus the last chunk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if (data.endswith(b"}") or data.endswith(b"0\r\n\r\n")) and not self.done.done():
            self.done.set_result(None)


def measure(kind: str, url: str, stream: bool, n: int, clients: int, run_dir: Path) -> float:
    out = run_dir / f"callgrind-{kind}-{'stream' if stream else 'chat'}.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out}", sys.executable, __file__, "--child", kind, "--url", url,
            "-n", str(n), "-c", str(clients)] + (["--stream"] if stream else [])
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for step, cmd in (("ready", "-i"), ("done", "-d")):
            line = proc.stdout.readline().strip()
            if line != step:
                raise SystemExit(f"{kind}: expected {step!r}, got {line!r}")
            subprocess.run(["callgrind_control", cmd] + (["on"] if cmd == "-i" else []) + [str(proc.pid)],
                           check=True, capture_output=True)
            proc.stdin.write("\n")
            proc.stdin.flush()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # only the main thread: aiohttp's resolver and our getaddrinfo run in a pool thread only while connecting
    return sum(counted(out).values()) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1500)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--stream", action="store_true", help="only the streamed answer (20 chunks)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    body_file = "chat-stream.json" if args.stream else "chat.json"
    if args.child:
        import uvloop
        body = (BENCH_DIR / "requests" / body_file).read_bytes()
        uvloop.run(drive(args.child, args.url, body, args.n, args.c))
        return
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    run_dir = Path(tempfile.mkdtemp(prefix="relaygate-clientcost-"))
    port = free_port()
    ctx = Ctx(run_dir=run_dir, upstream=f"http://127.0.0.1:{port}", pin=False)
    upstream = start_upstream(ctx, port)
    url = ctx.upstream + "/v1/chat/completions"
    try:
        for stream in ([True] if args.stream else [False, True]):
            f = {kind: measure(kind, url, stream, args.n, args.c, run_dir) for kind in ("raw", "aiohttp", "lean")}
            what = "streamed (20 chunks)" if stream else "non-streaming"
            print(f"{what:<22} raw socket {f['raw'] / 1000:6.1f}k   aiohttp {f['aiohttp'] / 1000:6.1f}k   "
                  f"relaygate.upstream {f['lean'] / 1000:6.1f}k instructions per request; above the raw socket: "
                  f"aiohttp {(f['aiohttp'] - f['raw']) / 1000:.1f}k, relaygate.upstream "
                  f"{(f['lean'] - f['raw']) / 1000:.1f}k", flush=True)
    finally:
        upstream.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(run_dir)


if __name__ == "__main__":
    main()
