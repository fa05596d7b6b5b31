"""What log() does with values JSON cannot spell, and with tensors and numpy values.

The rule (README "Values"): NaN, +Inf and -Inf are kept as the strings "NaN", "Infinity"
and "-Infinity", never a silent null; a genuine None stays null. 0-d tensors and numpy
scalars are numbers; a tensor with dimensions is a TypeError that says `.item()` / `.tolist()`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

import distwal
from distwal._folder import iter_envelopes, list_writers

NAN, INF = float("nan"), float("inf")


def logged_data(root: Path, *records: Any) -> list[Any]:
    """Log `records` through a fresh writer and read their data back from disk."""
    writer = distwal.init(dir=root)
    for record in records:
        writer.log(record)
    assert writer.flush(timeout=10)
    return [orjson.loads(raw)["data"] for w in list_writers(str(root)) for _, _, raw in iter_envelopes(w, [])]


def test_nan_and_infinities_are_kept_as_strings_never_null(tmp_path: Path) -> None:
    got = logged_data(
        tmp_path / "run",
        {"loss": NAN, "up": INF, "down": -INF, "ok": 0.5},
        {"nested": {"grads": [1.0, NAN, -INF]}, "pair": (INF, 2)},
    )
    assert got == [
        {"loss": "NaN", "up": "Infinity", "down": "-Infinity", "ok": 0.5},
        {"nested": {"grads": [1.0, "NaN", "-Infinity"]}, "pair": ["Infinity", 2]},
    ]


def test_a_genuine_none_stays_null_and_strings_are_untouched(tmp_path: Path) -> None:
    got = logged_data(tmp_path / "run", {"value": None, "text": "null", "unusual": "Infinity"})
    assert got == [{"value": None, "text": "null", "unusual": "Infinity"}]


def test_the_record_passed_in_is_not_modified(tmp_path: Path) -> None:
    record = {"loss": NAN, "nested": {"x": INF}}
    logged_data(tmp_path / "run", record)
    assert math.isnan(record["loss"]) and record["nested"] == {"x": INF}


def test_numpy_scalars_and_arrays_are_numbers_and_keep_nan(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    got = logged_data(
        tmp_path / "run",
        {"f32": np.float32(0.5), "i64": np.int64(3), "nan32": np.float32("nan"), "arr": np.array([1.0, np.inf]),
         "zero_d": np.array(2.5), "ints": np.array([1, 2])},
    )
    assert got == [{"f32": 0.5, "i64": 3, "nan32": "NaN", "arr": [1.0, "Infinity"], "zero_d": 2.5, "ints": [1, 2]}]


def test_zero_d_tensors_are_numbers_and_keep_nan(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    got = logged_data(
        tmp_path / "run",
        {"loss": torch.tensor(0.25), "grad": torch.tensor(2.0, requires_grad=True), "step": torch.tensor(7),
         "bad": torch.tensor(float("nan"))},
    )
    assert got == [{"loss": 0.25, "grad": 2.0, "step": 7, "bad": "NaN"}]


def test_a_tensor_with_dimensions_says_item_or_tolist_and_uses_no_seq(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    writer = distwal.init(dir=tmp_path / "run")
    with pytest.raises(TypeError, match=r"Tensor of shape \(2, 3\).*\.item\(\).*\.tolist\(\)"):
        writer.log({"weights": torch.ones(2, 3)})
    assert writer.log({"after": 1}) == 1
