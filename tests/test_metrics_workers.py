"""``relaygate serve --workers N`` and ``GET /metrics``: whichever worker takes the scrape serves every worker's
samples (observability/shared.py). Real processes on 127.0.0.1, bounded well under a minute."""

from __future__ import annotations

import time
from pathlib import Path

from .process_support import gateway_process
from .test_workers import DEMO, pids_serving


def test_metrics_of_every_worker_from_whichever_answers_the_scrape(tmp_path: Path) -> None:
    """Each worker writes its exposition where the others can read it: a scrape, whatever worker takes it,
    has every worker's samples, labelled ``worker``, and they add up to the calls made."""
    from prometheus_client.parser import text_string_to_metric_families

    with gateway_process(tmp_path, {"models": [DEMO]}, args=("--workers", "2")) as gw:
        assert len(pids_serving(gw, 2)) == 2
        calls = 12
        for _ in range(calls):
            r = requests_post(gw.url + "/v1/chat/completions", {"model": "demo", "messages": [
                {"role": "user", "content": "hi"}]})
            assert r == 200
        deadline = time.monotonic() + 15
        while True:  # the files are rewritten every second: wait for both workers' latest counts
            import urllib3

            text = urllib3.request("GET", gw.url + "/metrics", timeout=5).data.decode()
            per_worker: dict[str, float] = {}
            workers: set[str] = set()
            for family in text_string_to_metric_families(text):
                if family.name == "relaygate_requests":
                    for s in family.samples:
                        per_worker[s.labels["worker"]] = per_worker.get(s.labels["worker"], 0) + s.value
                if family.name == "process_cpu_seconds":
                    workers |= {s.labels["worker"] for s in family.samples}
            if (sum(per_worker.values()) == calls and len(workers) == 2) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert workers == {"0", "1"} and sum(per_worker.values()) == calls


def requests_post(url: str, body: dict[str, object]) -> int:
    import urllib3

    # a connection each: the kernel hands them to either worker
    return urllib3.request("POST", url, json=body, timeout=10, headers={"connection": "close"}).status
