"""The semantic level of the response cache: a chat request whose conversation is close enough to one answered
before (by the cosine of their embeddings) is served that answer.

Off unless a model's ``cache.semantic`` names an embeddings model. A match is only ever made within one scope:
the same route, model as routed, namespace and every parameter but the messages (the hash of all that), so a
similar question with another temperature, tool set or team never matches. The conversation's text is embedded
by the configured model through the whole pipeline (the call is logged, limited and billed to the caller's key,
like a summary), once per exact miss; the vectors are kept in process, at most ``max_entries`` per model (the
least recently matched go first), each pointing at the exact key of its answer in the cache's levels (an
answer those levels no longer hold is no match).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from relaygate.core.call import Call

MAX_TEXT_CHARS = 32_000  # of the conversation, embedded from its end (the newest turns decide what it asks)
_mul = operator.mul


def conversation_text(body: dict[str, Any]) -> str:
    """What is embedded: each message as ``role: text`` (text parts only), the newest last."""
    lines = []
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and content:
            lines.append(f"{m.get('role', 'user')}: {content}")
    return "\n".join(lines)[-MAX_TEXT_CHARS:]


def scope_of(call: Call, names: Sequence[str], space: str, ignored: frozenset[str]) -> str:
    """The hash of everything a match must share: the request without its messages and ignored fields, the
    model as routed, the deployments' names and the namespace."""
    kept = {k: v for k, v in call.body.items() if k not in ignored and k != "messages"}
    ident = (call.route, names, call.model, space)
    return hashlib.blake2b(orjson.dumps((ident, kept), option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def unit(vector: Sequence[float]) -> list[float] | None:
    """``vector`` scaled to length 1; None for one that is empty, zero or not numbers."""
    try:
        norm = math.sqrt(sum(map(_mul, vector, vector)))
    except TypeError:
        return None
    if not norm or not math.isfinite(norm):
        return None
    return [float(v) / norm for v in vector]


class SemanticIndex:
    """Unit vectors by scope, each with the exact cache key of its answer; at most ``max_entries`` in all."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._all: OrderedDict[str, str] = OrderedDict()  # exact key -> its scope, least recently used first
        self._scopes: dict[str, dict[str, list[float]]] = {}  # scope -> exact key -> vector

    def __len__(self) -> int:
        return len(self._all)

    def add(self, scope: str, key: str, vector: list[float]) -> None:
        self.drop(key)
        self._scopes.setdefault(scope, {})[key] = vector
        self._all[key] = scope
        while len(self._all) > self.max_entries:
            self.drop(next(iter(self._all)))

    def drop(self, key: str) -> None:
        scope = self._all.pop(key, None)
        if scope is not None:
            held = self._scopes[scope]
            del held[key]
            if not held:
                del self._scopes[scope]

    def nearest(self, scope: str, vector: list[float], threshold: float) -> tuple[str, float] | None:
        """The key of the closest vector of ``scope`` at a cosine of at least ``threshold``, and that cosine."""
        best, best_key = threshold, None
        for key, held in self._scopes.get(scope, {}).items():
            if len(held) != len(vector):
                continue  # another embedding size (the config changed): never comparable
            cosine = sum(map(_mul, held, vector))
            if cosine >= best:
                best, best_key = cosine, key
        if best_key is None:
            return None
        self._all.move_to_end(best_key)
        return best_key, best
