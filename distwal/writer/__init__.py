"""The writer side: one process's durable log in the shared directory."""

from .writer import Writer

__all__ = ["Writer"]
