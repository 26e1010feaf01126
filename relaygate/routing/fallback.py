"""Fallbacks: on given error classes, other models to try in order, each model at most once per call."""

from __future__ import annotations

from collections.abc import Container

from relaygate.config import FallbackConfig


class Fallbacks:
    """A model's fallback rules. Loops are impossible: a model already visited by the call is skipped,
    and a deployment belongs to exactly one model, so no deployment is reached twice through fallbacks."""

    __slots__ = ("rules",)

    def __init__(self, rules: list[FallbackConfig]) -> None:
        self.rules = [(frozenset(r.on), tuple(r.models)) for r in rules]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def next_model(self, kind: str, visited: Container[str]) -> str | None:
        """The first model not yet visited among the rules matching an error of class ``kind``."""
        for on, models in self.rules:
            if kind in on:
                for m in models:
                    if m not in visited:
                        return m
        return None
