"""MLflow's fluent logging calls, as durable distwal records (works without mlflow installed).

    import distwal.integrations.mlflow as mlflow   # was: import mlflow
    mlflow.log_params({"lr": 3e-4, "batch": 64})
    for step in range(steps):
        mlflow.log_metric("loss", loss, step=step)

Each call is one distwal.log() on this process's writer (started from the environment on
first use, like mlflow starts a run), so it survives a SIGKILL as any record does, and the
leader delivers it to the mlflow+http(s):// sink: every rank gets its own child run.

The records it writes (what the MLflow sink reads back; other sinks store them as they are):

    log_metric("loss", 0.5, step=3)     -> {"mlflow.metrics": {"loss": 0.5}, "step": 3}
    log_metrics({"a": 1, "b": 2})       -> {"mlflow.metrics": {"a": 1.0, "b": 2.0}, "step": 0}
    ... timestamp=1700000000123         -> ... "ts": 1700000000.123   (ms in, unix seconds out)
    log_param("lr", 0.1)                -> {"mlflow.params": {"lr": "0.1"}}
    log_params / set_tag / set_tags     -> {"mlflow.params": {...}} / {"mlflow.tags": {...}}

As in MLflow: values are converted with float() (metrics) and str() (params, tags), and a
missing step is 0. NaN and infinities are kept as "NaN", "Infinity" and "-Infinity". The
MLflow-specific arguments (synchronous, run_id, model_id, dataset) are accepted and ignored:
every call goes to this writer's run, and every call is durable when log() returns as the
writer's durability mode says (no background queue to lose).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .. import _api

__all__ = ["log_metric", "log_metrics", "log_param", "log_params", "set_tag", "set_tags"]


def log_metric(
    key: str,
    value: float,
    step: int | None = None,
    synchronous: bool | None = None,
    timestamp: int | None = None,
    run_id: str | None = None,
    model_id: str | None = None,
    dataset: Any = None,
) -> None:
    """Log one metric point (mlflow.log_metric); returns once distwal holds it."""
    # The training loop's call: kept to one record build and one log() (no helper calls).
    number = float(value)
    kept: float | str = number if number - number == 0 else _non_finite(number)  # inf - inf, nan - nan: nan
    record: dict[str, Any] = {"mlflow.metrics": {key: kept}, "step": 0 if step is None else int(step)}
    if timestamp is not None:
        record["ts"] = timestamp / 1000
    writer = _api._current
    if writer is None or writer.closed:
        writer = _api.init()
    writer.log(record)


def log_metrics(
    metrics: Mapping[str, float],
    step: int | None = None,
    synchronous: bool | None = None,
    run_id: str | None = None,
    timestamp: int | None = None,
    model_id: str | None = None,
    dataset: Any = None,
) -> None:
    """Log several metrics at one step in one record (mlflow.log_metrics)."""
    _log({"mlflow.metrics": {key: _number(value) for key, value in metrics.items()}}, step, timestamp)


def log_param(key: str, value: Any, synchronous: bool | None = None) -> Any:
    """Log a param of this writer's run (mlflow.log_param); returns `value` as MLflow does."""
    _api.log({"mlflow.params": {key: str(value)}})
    return value


def log_params(params: Mapping[str, Any], synchronous: bool | None = None, run_id: str | None = None) -> None:
    """Log several params in one record (mlflow.log_params)."""
    _api.log({"mlflow.params": {key: str(value) for key, value in params.items()}})


def set_tag(key: str, value: Any, synchronous: bool | None = None) -> None:
    """Set a tag of this writer's run (mlflow.set_tag)."""
    _api.log({"mlflow.tags": {key: str(value)}})


def set_tags(tags: Mapping[str, Any], synchronous: bool | None = None) -> None:
    """Set several tags in one record (mlflow.set_tags)."""
    _api.log({"mlflow.tags": {key: str(value) for key, value in tags.items()}})


def _log(record: dict[str, Any], step: int | None, timestamp: int | None) -> None:
    record["step"] = int(step) if step is not None else 0
    if timestamp is not None:
        record["ts"] = timestamp / 1000
    _api.log(record)


def _number(value: Any) -> float | str:
    number = float(value)
    return number if math.isfinite(number) else _non_finite(number)


def _non_finite(number: float) -> str:
    # The project's value rule: non-finite floats travel as their proto3 JSON spelling.
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
