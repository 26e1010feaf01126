"""Context windows of known models (the bundled catalog's ``context_window``, and ``max_input_tokens`` where
a model takes less input than its window), resolved by name like prices are."""

from __future__ import annotations

from relaygate.catalog.prices import bundled_models, match


class ContextWindows:
    """The prompt tokens a model takes at most, by upstream model name (None when the catalog does not know)."""

    def __init__(self, table: dict[str, int] | None = None) -> None:
        if table is None:
            table = {}
            for name, e in bundled_models().items():
                window = e.get("max_input_tokens") or e.get("context_window")
                if isinstance(window, int) and window > 0:
                    table[name] = window
        self.table = table
        self._names = sorted(table, key=len, reverse=True)
        self._cache: dict[str, int | None] = {}

    def lookup(self, model: str) -> int | None:
        if model in self._cache:
            return self._cache[model]
        found = match(model, self.table, self._names)
        if len(self._cache) < 4096:
            self._cache[model] = found
        return found
