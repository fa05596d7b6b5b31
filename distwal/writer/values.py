"""What log() does with values JSON cannot spell: objects orjson does not know, NaN and Infinity."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

# The newline is our delimiter; dataclasses go to default(), which refuses non-mappings.
OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATACLASS


def default(obj: Any) -> Any:
    # Called by orjson only for types it does not know, so it costs nothing on the hot path.
    if isinstance(obj, Mapping):
        return dict(obj)
    # Tensors (torch, or anything array-like with .item()/.tolist()) without importing them:
    # a 0-d one is a number; anything larger needs the caller's decision (issue 9).
    shape = getattr(obj, "shape", None)
    if shape is not None and hasattr(obj, "item"):
        if len(shape) == 0:
            return obj.item()
        raise TypeError(
            f"cannot log a {type(obj).__name__} of shape {tuple(shape)}: log a number with .item() "
            "or a list with .tolist()"
        )
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


# NaN and infinities: JSON has no spelling for them and orjson writes null. distwal keeps them
# as the strings of the proto3 JSON mapping for doubles, which MLflow and OTLP/JSON read back
# as floats (README, "Values"). Only a record whose JSON holds "null" is walked.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def keep_non_finite(value: Any) -> Any:
    """`value` with every NaN/Infinity float replaced by its string; the same object if none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[repr(float(value))]
    if isinstance(value, Mapping):
        items = {k: keep_non_finite(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if isinstance(value, (list, tuple)):
        kept = [keep_non_finite(v) for v in value]
        return value if all(a is b for a, b in zip(kept, value)) else kept
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalars and arrays, 0-d tensors
        if getattr(value.dtype, "kind", "f") == "f":  # numpy's float kind; torch dtypes have no kind
            plain = value.tolist()
            kept = keep_non_finite(plain)
            return value if kept is plain else kept
    return value
