"""Cut the part of OpenAI's OpenAPI description that relaygate serves out of the whole one (run once; the
output, ``openai-openapi.yaml``, is committed): those paths and every component they reach."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

PATHS = {"/chat/completions": ["post"], "/embeddings": ["post"], "/audio/speech": ["post"],
         "/audio/transcriptions": ["post"], "/audio/translations": ["post"], "/models": ["get"],
         "/models/{model}": ["get"]}
DROP = ("x-oaiMeta", "examples", "example")  # documentation only: smaller, and schemathesis ignores them


def refs(node: Any, found: set[tuple[str, str]]) -> None:
    """The components (kind, name) ``node`` refers to."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            _, _, kind, name = ref.split("/", 3)
            found.add((kind, name))
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in DROP}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(source: str, target: str) -> None:
    spec = yaml.load(Path(source).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    paths = {p: {m: strip(spec["paths"][p][m]) for m in methods} for p, methods in PATHS.items()}
    components = spec["components"]
    needed: set[tuple[str, str]] = set()
    refs(paths, needed)
    todo = list(needed)
    while todo:
        kind, name = todo.pop()
        more: set[tuple[str, str]] = set()
        refs(components[kind][name], more)
        todo.extend(more - needed)
        needed |= more
    kept: dict[str, dict[str, Any]] = {}
    for kind, name in sorted(needed):
        kept.setdefault(kind, {})[name] = strip(components[kind][name])
    out = {"openapi": spec["openapi"], "info": {**spec["info"], "description": (
               "An excerpt of OpenAI's OpenAPI description (openai/openai-openapi, MIT licence: "
               "openai-openapi.LICENSE): the routes relaygate serves and the components they use.")},
           "servers": spec["servers"], "security": spec["security"], "paths": paths,
           "components": {**kept, "securitySchemes": components["securitySchemes"]}}
    Path(target).write_text(yaml.safe_dump(out, sort_keys=False, width=120, allow_unicode=True))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).with_name("openai-openapi.yaml")))
