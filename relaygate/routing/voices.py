"""Voice routing for text-to-speech: narrow a model's candidate deployments to those serving the voice.

A deployment's ``voices`` claims voices: a voice some deployment lists goes only to the deployments that list
it. A deployment without ``voices`` serves every voice nobody claims (``other voices → OpenAI``). A
``voice_map`` entry lets a deployment also serve a voice under another name (``alloy → af_heart`` on a local
Kokoro fallback), without claiming it. Strategies, retries and fallbacks then work on what is left.
"""

from __future__ import annotations

from typing import Any

from relaygate.config import OpenAIFields
from relaygate.core.call import Call, Route
from relaygate.core.errors import BadRequest
from relaygate.routing.deployment import Deployment


def voice_of(body: dict[str, Any]) -> str | None:
    """The requested voice: a built-in name, or a custom voice object's ``id``."""
    voice = body.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")
    return voice if isinstance(voice, str) else None


def voices_of(dep: Deployment) -> tuple[list[str], dict[str, str]]:
    """A deployment's ``voices`` and ``voice_map`` (only OpenAI-format deployments speak)."""
    c = dep.config
    return (c.voices, c.voice_map) if isinstance(c, OpenAIFields) else ([], {})


def narrow_by_voice(call: Call, deps: list[Deployment]) -> list[Deployment]:
    """The deployments that may speak the call's voice (all of them for other routes)."""
    if call.route is not Route.SPEECH:
        return deps
    voice = voice_of(call.body)
    listed = [(d, *voices_of(d)) for d in deps]
    if voice is None or not any(voices or mapped for _, voices, mapped in listed):
        return deps
    claimed = any(voice in voices for _, voices, _ in listed)
    out = [d for d, voices, mapped in listed
           if voice in mapped or (voice in voices if claimed else not voices)]
    if not out:
        known = sorted({v for _, voices, mapped in listed for v in (*voices, *mapped)})
        raise BadRequest(f"The voice {voice!r} is not available for model {call.model!r}. "
                         f"Available voices: {', '.join(known)}.", param="voice", code="invalid_value")
    return out


def documented_voices() -> dict[str, tuple[str, ...]]:
    """Built-in voices of the speech models the bundled catalog knows, as their provider documents them."""
    from relaygate.catalog.prices import bundled_models

    return {name: tuple(e["voices"]) for name, e in bundled_models().items() if e.get("voices")}


def offered_voices(deps: list[Deployment], asked: str, documented: dict[str, tuple[str, ...]]) -> list[str]:
    """The voices a model's deployments speak, in config order: those a deployment lists or renames
    (``voices``, ``voice_map``), and, for a deployment that lists none, its upstream model's documented
    voices (the catalog's: OpenAI's). A deployment that lists none of a model the catalog does not know adds
    nothing: what that server speaks is not known here."""
    from relaygate.catalog.prices import catalog_names

    out: dict[str, None] = {}
    for d in deps:
        voices, mapped = voices_of(d)
        out.update(dict.fromkeys(voices))
        out.update(dict.fromkeys(mapped))
        if not voices:
            names = catalog_names(d.upstream_model(asked))
            known = next((documented[n] for n in names if n in documented), ())
            out.update(dict.fromkeys(known))
    return list(out)
