"""The MLflow tee writes the records its docstring promises, with MLflow's signatures, without mlflow."""

from __future__ import annotations

import importlib.util
import inspect
import math

import pytest
from helpers.procs import read_dir

import distwal
import distwal.integrations.mlflow as tee
from distwal.sinks.mlflow import record_entries


def test_mlflow_is_not_needed():
    assert importlib.util.find_spec("mlflow") is None, "mlflow is installed in distwal's venv: it must not be"


def test_each_call_is_one_record_of_the_documented_shape(tmp_path):
    distwal.init(dir=str(tmp_path / "wal"))
    assert tee.log_metric("loss", 0.5, step=3, synchronous=False, run_id="ignored") is None
    tee.log_metrics({"a": 1, "b": 2.5})
    tee.log_metric("t", 1, timestamp=1_700_000_000_123)
    assert tee.log_param("lr", 0.1) == 0.1
    tee.log_params({"layers": 4, "opt": "adamw"}, synchronous=True)
    tee.set_tag("stage", "warmup")
    tee.set_tags({"a": 1})
    tee.log_metric("bad", float("nan"), step=1)
    tee.log_metrics({"up": math.inf, "down": -math.inf})
    distwal.finish()
    (writer,) = read_dir(tmp_path / "wal").values()
    assert [data for _, _, data in writer.records] == [
        {"mlflow.metrics": {"loss": 0.5}, "step": 3},
        {"mlflow.metrics": {"a": 1.0, "b": 2.5}, "step": 0},
        {"mlflow.metrics": {"t": 1.0}, "step": 0, "ts": 1_700_000_000.123},
        {"mlflow.params": {"lr": "0.1"}},
        {"mlflow.params": {"layers": "4", "opt": "adamw"}},
        {"mlflow.tags": {"stage": "warmup"}},
        {"mlflow.tags": {"a": "1"}},
        {"mlflow.metrics": {"bad": "NaN"}, "step": 1},
        {"mlflow.metrics": {"up": "Infinity", "down": "-Infinity"}, "step": 0},
    ]


def test_the_sink_reads_the_tees_records_back_as_metrics_params_and_tags():
    got = list(record_entries({"mlflow.metrics": {"loss": 0.5, "step": 2.0}, "step": 3, "ts": 1.5}, 9, 100.0))
    assert got == [("metrics", {"key": "loss", "value": 0.5, "timestamp": 1500, "step": 3}),
                   ("metrics", {"key": "step", "value": 2.0, "timestamp": 1500, "step": 3})]
    assert list(record_entries({"mlflow.params": {"lr": "0.1"}, "mlflow.tags": {"s": "x"}}, 1, 1.0)) == [
        ("params", {"key": "lr", "value": "0.1"}), ("tags", {"key": "s", "value": "x"})]


# MLflow 3.17's signatures (inspect.signature in its venv): names and order of the parameters.
MLFLOW_PARAMETERS = {
    "log_metric": ["key", "value", "step", "synchronous", "timestamp", "run_id", "model_id", "dataset"],
    "log_metrics": ["metrics", "step", "synchronous", "run_id", "timestamp", "model_id", "dataset"],
    "log_param": ["key", "value", "synchronous"],
    "log_params": ["params", "synchronous", "run_id"],
    "set_tag": ["key", "value", "synchronous"],
    "set_tags": ["tags", "synchronous"],
}


@pytest.mark.parametrize("name", sorted(MLFLOW_PARAMETERS))
def test_the_signatures_are_mlflows(name):
    assert list(inspect.signature(getattr(tee, name)).parameters) == MLFLOW_PARAMETERS[name]
