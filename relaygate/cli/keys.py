"""``relaygate keys create|list|revoke|rotate``: manage virtual keys directly in the configured database.

The CLI writes the database itself (no running gateway needed). Running gateways see a revocation within
``auth.cache_ttl`` seconds (their key cache); use ``DELETE /admin/keys/{id}`` for an immediate effect on the
instance that serves the admin call.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from relaygate.config import ConfigError, load_config
from relaygate.core.errors import GatewayError


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list, revoke or rotate virtual keys (in the configured database)")
    keys.add_argument("--config", help="YAML config file (its 'database' is used; default ./relaygate.db)")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    create = ks.add_parser("create", help="create a key; prints it once")
    create.add_argument("--name")
    create.add_argument("--team", dest="team_id")
    create.add_argument("--user", dest="user_id")
    create.add_argument("--models", help="comma-separated model names the key may use (default: all)")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--max-parallel", type=int)
    create.add_argument("--budget-usd", type=float)
    create.add_argument("--budget-period", choices=("day", "month", "total"))
    create.add_argument("--expires-in", type=float, help="seconds until the key expires")
    create.add_argument("--tag", action="append", dest="tags", help="a tag (repeatable)")
    lst = ks.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--team", dest="team_id")
    lst.add_argument("--user", dest="user_id")
    lst.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = ks.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    rotate = ks.add_parser("rotate", help="give a key a new secret; the old one stays valid for --grace seconds")
    rotate.add_argument("id")
    rotate.add_argument("--grace", type=float, default=None, help="seconds (default: auth.rotation_grace)")


def run(args: argparse.Namespace) -> int:
    from relaygate.auth.keys import KeyStore, parse_fields
    from relaygate.store.db import Database

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    db = Database(cfg.database.url)
    try:
        db.migrate()
        store = KeyStore(db.engine)
        cmd = args.keys_command
        out: Any
        if cmd == "create":
            body: dict[str, Any] = {k: v for k, v in {
                "name": args.name, "team_id": args.team_id, "user_id": args.user_id, "rpm": args.rpm,
                "tpm": args.tpm, "max_parallel": args.max_parallel, "budget_usd": args.budget_usd,
                "budget_period": args.budget_period, "expires_in": args.expires_in, "tags": args.tags,
                "models": args.models.split(",") if args.models else None}.items() if v is not None}
            secret, view = store.create_key(parse_fields(body, partial=False))
            out = {**view, "key": secret}
        elif cmd == "list":
            out = store.list_keys(args.team_id, args.user_id, args.all)
        elif cmd == "revoke":
            out = store.revoke_key(args.id)
        else:
            grace = cfg.auth.rotation_grace if args.grace is None else args.grace
            secret, view = store.rotate_key(args.id, grace)
            out = {**view, "key": secret}
    except GatewayError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    finally:
        db.close()
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
