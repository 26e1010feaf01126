"""What every config model shares, and the error that lists a config's problems."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` lists every problem with its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


class Strict(BaseModel):
    """Frozen, and an unknown field is an error (a typo never passes silently).

    Validators are built on first use (``defer_build``), not at import: a gateway validates one ``Config``,
    whose validator holds every model below it, so building each nested model's own validator at import
    (~50 ms of start-up CPU net, before the first request can be served) was work nothing used."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
