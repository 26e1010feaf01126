"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's shape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relaygate.api.anthropic.translate import anthropic_model, anthropic_model_page
from relaygate.auth.authenticator import caller
from relaygate.core.errors import ModelNotFound
from relaygate.server.http import Request, Response, json_response

if TYPE_CHECKING:
    from relaygate.gateway import Gateway


def model_object(gw: Gateway, name: str) -> dict[str, Any]:
    deps = gw.table.models[name]
    return {"id": name, "object": "model", "created": int(gw.started), "owned_by": "relaygate",
            "providers": sorted({d.provider_type for d in deps})}


async def list_models(gw: Gateway, req: Request) -> Response:
    key = await caller(gw.auth, req.headers)  # with a master key configured, listing needs a key too
    names = [n for n in gw.table.names() if key is None or key.allows_model(n)]
    if "anthropic-version" in req.headers:  # an Anthropic client (Claude Code discovers models this way)
        return json_response(anthropic_model_page(names, gw.started, req.query))
    return json_response({"object": "list", "data": [model_object(gw, n) for n in names]})


async def get_model(gw: Gateway, req: Request) -> Response:
    name = req.params["rest"]
    key = await caller(gw.auth, req.headers)
    if name not in gw.table.models or name == "*" or (key is not None and not key.allows_model(name)):
        err = ModelNotFound(f"The model {name!r} does not exist on this gateway. "
                            f"Available models: {gw.table.listed(key)}.", param="model")
        if "anthropic-version" in req.headers:
            from relaygate.api.anthropic.messages import anthropic_error

            return anthropic_error(err, req.id)
        raise err
    if "anthropic-version" in req.headers:
        return json_response(anthropic_model(name, gw.started))
    return json_response(model_object(gw, name))


ROUTES = [
    ("GET", "/v1/models", list_models),
    ("GET", "/models", list_models),
    ("GET", "/v1/models/{rest}", get_model),
]
