from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.upstream.rawserver import LOOPS, run


@pytest.fixture(params=LOOPS)
def arun(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``arun(coro_fn, timeout=20)``: the test body, on the default loop and on uvloop, bounded in time."""
    def go(test: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 20.0) -> Any:
        return run(request.param, test, timeout)
    return go
