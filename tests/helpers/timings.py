"""Timings the process tests take anyway (failover, adoption), recorded for benchmarks/ship.py.

A test asks for the `timings` fixture and calls `timings.record("failover", seconds, mode=...)`.
When DISTWAL_TEST_TIMINGS names a file (as the benchmark sets it when it runs these tests),
each call appends one JSON line {"name", "seconds", "test", ...}; otherwise it does nothing.
Recording never changes what a test waits for or asserts.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

TIMINGS_ENV = "DISTWAL_TEST_TIMINGS"

# Read at import (collection), before the fixtures scrub every DISTWAL_* variable.
_PATH = os.environ.get(TIMINGS_ENV, "").strip()


class Timings:
    def __init__(self, path: str, test: str) -> None:
        self.path = path
        self.test = test

    def record(self, name: str, seconds: float, **notes: Any) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"name": name, "seconds": seconds, "test": self.test, **notes}) + "\n")


def timings_for(test: str) -> Timings:
    return Timings(_PATH, test)


def first_stored(requests: Iterable[Any], accept: Any) -> float | None:
    """When the server answered 200 to the first request `accept(req)` takes (FaultServer's Request)."""
    return min((r.finished or r.arrived for r in requests if r.status == 200 and accept(r)), default=None)


def read_timings(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
