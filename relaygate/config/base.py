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
    whose validator holds every model below it. Importing the config package and validating the default
    config alone took 0.22 s of CPU with every nested model's validator built at import, 0.17 s deferred;
    in a whole start-up (bench/footprint.py) the difference is within its noise."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
