"""The ``relaygate`` command: serve, check-config, emulate."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from relaygate.config import ConfigError, load_config

EMULATORS = ("openai", "cohere", "gemini", "anthropic", "bedrock")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relaygate", description="An OpenAI-compatible LLM gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: built-in demo config)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 4000)")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes on the one port (default: server.workers, 1)")
    serve.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker's socket

    check = sub.add_parser("check-config", help="validate a config file; list every error")
    check.add_argument("file")

    emulate = sub.add_parser("emulate", help="run a provider emulator (for tests and offline tries)")
    emulate.add_argument("provider", choices=EMULATORS)
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=9000)
    emulate.add_argument("--api-key", default=None, help="require this key from clients")

    from relaygate.cli import keys as keys_cli

    keys_cli.add_parser(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "keys":
        return keys_cli.run(args)
    if args.command == "emulate":
        return emulate_provider(args.provider, args.host, args.port, args.api_key)
    return serve_gateway(args.config, args.host, args.port, args.workers, args.listen_fd)


def check_config(path: str) -> int:
    from relaygate.gateway import check_deployments

    try:
        cfg = load_config(path)
        check_deployments(cfg)
    except ConfigError as e:
        print(f"{path}: {len(e.errors)} error(s)", file=sys.stderr)
        for err in e.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(cfg.models)} models, {len(cfg.deployment_names())} deployments)")
    return 0


def serve_gateway(config_path: str | None, host: str | None, port: int | None, workers: int | None = None,
                  listen_fd: int | None = None) -> int:
    """One gateway process; with several workers, their supervisor; with ``listen_fd``, one of those workers
    (serving the supervisor's socket)."""
    import socket

    from relaygate.gateway import check_deployments
    from relaygate.server.app import App
    from relaygate.server.serve import GatewayServer
    from relaygate.server.workers import WORKER_ENV, WORKERS_ENV, check_workers, supervise

    workers = 1 if listen_fd is not None else workers
    try:
        cfg = load_config(config_path)
        check_deployments(cfg)
        workers = workers if workers is not None else cfg.server.workers
        if workers < 1:
            raise ConfigError([f"--workers: {workers}: at least 1"])
        check_workers(cfg, workers)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    if cfg.access_log.enabled:  # its lines are JSON alone, one per request (docs/observability.md)
        access = logging.getLogger("relaygate.access")
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False
    host = host or cfg.server.host
    port = port if port is not None else cfg.server.port
    log = logging.getLogger("relaygate")
    if config_path is None and listen_fd is None:
        log.info("no --config given: serving the built-in 'demo' model%s",
                 " and OpenAI's models (OPENAI_API_KEY is set)" if len(cfg.models) > 1 else "")
    if workers > 1:
        return supervise(cfg, config_path, host, port, workers)
    supervisor = os.getppid() if listen_fd is not None else None
    app = App(cfg, freeze_gc=True, config_path=config_path, supervisor=supervisor,
              workers=int(os.environ.get(WORKERS_ENV, "1")) if listen_fd is not None else 1)
    server = GatewayServer(app, host, port, parent=supervisor)
    if listen_fd is None:
        log.info("relaygate listening on http://%s:%d/v1 (at most %d connections)", host, port,
                 server.watchdog.max_connections)
        # bound here, as a worker's supervisor binds: uvloop would resolve the address in libuv's thread pool,
        # four threads that then idle for the life of the process
        server.run(sockets=[server.config.bind_socket()])
    else:
        log.info("worker %s serving (pid %d, at most %d connections)", os.environ.get(WORKER_ENV, "?"),
                 os.getpid(), server.watchdog.max_connections)
        server.run(sockets=[socket.socket(fileno=listen_fd)])
    return 0


def emulate_provider(provider: str, host: str, port: int, api_key: str | None) -> int:
    try:
        import aiohttp  # noqa: F401  (the emulators are aiohttp.web apps; the gateway itself does not need it)
    except ImportError:
        print("relaygate emulate needs aiohttp: pip install 'relaygate[emulate]' (requirements-dev.lock has it)",
              file=sys.stderr)
        return 2
    from relaygate.testing.base import run_forever

    if provider == "openai":
        from relaygate.testing.openai import OpenAIEmulatorOptions, create_app

        app = create_app(OpenAIEmulatorOptions(api_key=api_key))
    elif provider == "cohere":
        from relaygate.testing.cohere import CohereEmulatorOptions
        from relaygate.testing.cohere import create_app as create_cohere_app

        app = create_cohere_app(CohereEmulatorOptions(api_key=api_key))
    elif provider == "gemini":
        from relaygate.testing import gemini

        app = gemini.create_app(gemini.GeminiEmulatorOptions(api_key=api_key, bearer_token=api_key))
    elif provider == "anthropic":
        from relaygate.testing import anthropic

        app = anthropic.create_app(anthropic.AnthropicEmulatorOptions(api_key=api_key))
    elif provider == "bedrock":
        from relaygate.testing import bedrock

        app = bedrock.create_app()
        print(f"bedrock emulator: sign with AWS's documented example keys (aws_access_key_id "
              f"{bedrock.TEST_ACCESS_KEY}; see docs/bedrock.md)", flush=True)
    print(f"{provider} emulator on http://{host}:{port}", flush=True)
    run_forever(app, host, port)
    return 0
