"""Typed models of the requests the gateway reads (msgspec Structs), and the one check that applies them.

The models follow OpenAI's OpenAPI description (``tests/specs/openai-openapi.yaml``) and Anthropic's Messages
API for the fields a translator reads, with their types and ranges; fields they do not know pass untouched
(an upstream may understand them). ``check`` turns a failure into a 400 that names the parameter's path
(``messages[2].content[0].type``). Which requests are checked, and when, is in docs/inputs.md.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from relaygate.core.errors import BadRequest

T = TypeVar("T")

# msgspec's messages end with the path: "Expected `str`, got `int` - at `$.messages[0].content`"
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
MAX_PARAM = 200  # a path names client keys, which may be long
MAX_REASON = 300  # msgspec quotes the value it refused (an unknown role, say), which may be long too


def check(body: Any, shape: type[T], *, dotted: bool = False) -> T:
    """``body`` as the typed ``shape``, or a BadRequest naming the first parameter that does not fit.
    ``dotted`` writes paths the way Anthropic's errors do (``messages.2.content.0.type``)."""
    try:
        return msgspec.convert(body, shape)
    except msgspec.ValidationError as e:
        raise shape_error(str(e), dotted) from None


def shape_error(text: str, dotted: bool = False) -> BadRequest:
    """A msgspec validation message as a gateway error: OpenAI's wording, the parameter as a path."""
    m = _AT.match(text)
    what, path = (m.group("what"), m.group("path") or "") if m else (text, "")
    missing = _MISSING.match(what)
    if missing:
        path += "." + missing.group("field")
    param = _param(path, dotted)
    code = "invalid_type" if what.startswith("Expected `") and ", got `" in what else "invalid_value"
    if missing:
        code = "missing_required_parameter"
    if dotted:  # Anthropic's wording: "max_tokens: Field required"
        reason = "Field required" if missing else what[:MAX_REASON]
        return BadRequest(f"{param or 'body'}: {reason}", param=param or None, code=code)
    if missing:
        return BadRequest(f"Missing required parameter: '{param}'.", param=param, code=code)
    reason = (what[:1].lower() + what[1:])[:MAX_REASON]
    if not param:
        return BadRequest(f"Invalid request body: {reason}.", code=code)
    return BadRequest(f"Invalid value for '{param}': {reason}.", param=param, code=code)


def _param(path: str, dotted: bool) -> str:
    param = path[1:] if path.startswith(".") else path
    if dotted:
        param = re.sub(r"\[(\d+)\]", r".\1", param)
    return param[:MAX_PARAM]
