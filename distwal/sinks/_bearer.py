"""What every sink that speaks HTTP shares: the bearer token, its headers, its client.

The token comes from the sink's `token` argument, else DISTWAL_TOKEN. It lives in memory
only: sent as `Authorization: Bearer ...`, masked out of any text a server sends back.
"""

from __future__ import annotations

import os

import httpx

from .._config import ENV_TOKEN


class Bearer:
    """The token (or None), the headers every request carries, and the client that sends them."""

    def __init__(
        self, token: str | None, client: httpx.Client | None, timeout: float, **headers: str
    ) -> None:
        self.token = token if token is not None else os.environ.get(ENV_TOKEN) or None
        self.headers = {"User-Agent": "distwal/1", **headers}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"
        self.client = client or httpx.Client(timeout=timeout, verify=True)

    def mask(self, text: str) -> str:
        """`text` without the token: a server or proxy may echo our headers back."""
        return text.replace(self.token, "***") if self.token else text
