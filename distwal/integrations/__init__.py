"""Tees that keep a tracker's own calls: change one import, and each call becomes a durable distwal record.

    import distwal.integrations.mlflow as mlflow   # was: import mlflow
    mlflow.log_metric("loss", 0.25, step=10)
"""

from __future__ import annotations

__all__ = ["mlflow"]
