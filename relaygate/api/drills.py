"""``/admin/chaos``: list, add, switch and remove fault-injection rules at run time (master key; only when
``chaos.enabled``); ``/admin/alerts``: the alert rules, their state and recent notifications.
docs/observability.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from relaygate.api.admin import admin_body, require_master
from relaygate.config.observability import ChaosRule
from relaygate.core.errors import BadRequest, NotFound, PermissionDenied, Unavailable
from relaygate.observability.chaos import Chaos
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


def _chaos(gw: Gateway, req: Request) -> Chaos:
    require_master(gw, req)
    if gw.chaos is None:
        raise PermissionDenied("Fault injection is off (chaos.enabled: false in the config).", code="chaos_disabled")
    return gw.chaos


async def _share(chaos: Chaos) -> None:
    """With Redis, a change is stored for every worker and instance on this config (observability/chaos_shared.py)."""
    if chaos.shared is not None:
        try:
            await chaos.shared.publish()
        except Exception as e:  # Redis down: the change holds in this process only, which the caller must know
            raise Unavailable("the chaos rule changed in this process only: the shared rule set could not be "
                              f"written to Redis ({type(e).__name__})", status=503, code="chaos_not_shared") from None


def _rule(body: dict[str, object]) -> ChaosRule:
    try:
        return ChaosRule.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise BadRequest(f"{param or 'rule'}: {err['msg']}", param=param) from None


async def chaos_rules(gw: Gateway, req: Request) -> Response:
    """GET: the rules and what each injected; POST: add one."""
    chaos = _chaos(gw, req)
    if req.method == "POST":
        try:
            rule = chaos.add(_rule(await admin_body(gw, req)))
        except ValueError as e:
            raise BadRequest(str(e)) from None
        await _share(chaos)
        return json_response(rule.view(), 201)
    return json_response(chaos.view())


async def chaos_rule(gw: Gateway, req: Request) -> Response:
    """GET, PATCH ``{"enabled": bool}``, DELETE one rule."""
    chaos = _chaos(gw, req)
    name = req.params["rest"]
    rule = chaos.rules.get(name)
    if rule is None:
        raise NotFound(f"no chaos rule named {name[:100]!r}", code="chaos_rule_not_found")
    if req.method == "PATCH":
        body = await admin_body(gw, req)
        if set(body) != {"enabled"} or not isinstance(body["enabled"], bool):
            raise BadRequest("a rule's update is {\"enabled\": true|false}", param="enabled")
        rule = chaos.switch(name, body["enabled"])
        await _share(chaos)
    elif req.method == "DELETE":
        chaos.remove(name)
        await _share(chaos)
        return json_response({"deleted": name})
    return json_response(rule.view())


async def alerts(gw: Gateway, req: Request) -> Response:
    require_master(gw, req)
    if gw.alerts is None:
        return json_response({"rules": [], "recent": [], "sent": 0, "failed": 0, "dropped": 0})
    return json_response(gw.alerts.view())


ROUTES = [
    ("GET", "/admin/alerts", alerts),
    ("GET", "/admin/chaos", chaos_rules),
    ("POST", "/admin/chaos", chaos_rules),
    ("GET", "/admin/chaos/{rest}", chaos_rule),
    ("PATCH", "/admin/chaos/{rest}", chaos_rule),
    ("DELETE", "/admin/chaos/{rest}", chaos_rule),
]
