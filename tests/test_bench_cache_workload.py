"""bench/cache.py's replayed workload: the share of repeats it promises, each repeating a question already asked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

PATH = Path(__file__).resolve().parent.parent / "bench" / "cache.py"


@pytest.fixture(scope="module")
def cache_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cache", PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("n", "repeat"), [(1000, 0.5), (101, 0.5), (400, 0.25), (10, 0.0), (1, 0.5)])
def test_workload_repeats_the_share_asked(cache_bench: ModuleType, n: int, repeat: float) -> None:
    plan = cache_bench.workload(n, repeat)
    assert len(plan) == n
    asked: set[int] = set()
    repeats = 0
    for k in plan:
        if k in asked:
            repeats += 1
        else:
            assert k == len(asked)  # a new question: the next number
            asked.add(k)
    assert repeats == (min(n - 1, round(n * repeat)) if n > 1 else 0)
    assert plan == cache_bench.workload(n, repeat)  # the same seed: the same replay


def test_workload_repeats_spread_over_the_run(cache_bench: ModuleType) -> None:
    plan = cache_bench.workload(1000, 0.5)
    first_half = sum(1 for i, k in enumerate(plan[:500]) if k in plan[:i])
    assert 150 < first_half < 350  # not all bunched at one end


def test_question_changes_only_the_last_message(cache_bench: ModuleType) -> None:
    base = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}
    a, b = cache_bench.question(base, 1), cache_bench.question(base, 2)
    assert a != b and cache_bench.question(base, 1) == a
    assert base["messages"][-1] == {"role": "user", "content": "q"}  # the base is not changed
