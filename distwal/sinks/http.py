"""http(s)://...: the distwal ingest protocol v1 over httpx.

Each batch is one POST of NDJSON envelopes (gzip by default) with the Distwal-Epoch and
Distwal-Domain headers, and a bearer token from DISTWAL_TOKEN when set. The token lives
only in the client's headers: never in a message, a log line or a file. TLS is verified.
"""

from __future__ import annotations

import gzip
import time
from email.utils import parsedate_to_datetime

import httpx

from .._exceptions import SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable, StaleEpoch
from ._base import Batch, Sink
from ._bearer import Bearer

DEFAULT_TIMEOUT = 30.0  # seconds per request
CHECK_TIMEOUT = 5.0  # seconds: a preflight check must not hold a job back


class HTTPSink(Sink):
    """POST batches to an ingest endpoint. Pass `client` (an httpx.Client) to customise transport."""

    scheme = "http"

    def __init__(
        self,
        url: str,
        client: httpx.Client | None = None,
        token: str | None = None,
        compress: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url
        self.compress = compress
        self._bearer = bearer = Bearer(token, client, timeout, **{"Content-Type": "application/x-ndjson"})
        self._client, self._headers = bearer.client, bearer.headers

    def write(self, batch: Batch) -> None:
        body = batch.ndjson()
        headers = dict(self._headers)
        headers["Distwal-Epoch"] = str(batch.epoch)
        headers["Distwal-Domain"] = batch.domain
        if self.compress:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(f"{self._where()}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise SinkUnavailable(f"{self._where()}: {type(exc).__name__}: {exc}") from None
        _raise_for(response, self._where(), self._bearer)

    def check(self) -> None:
        """POST an empty batch (a probe: no envelopes, epoch 0, nothing stored): any answer but
        401/403/404, 5xx or 429 shows the address reachable and the token accepted."""
        headers = {**self._headers, "Distwal-Epoch": "0", "Distwal-Domain": ""}
        try:
            response = self._client.post(self.url, content=b"", headers=headers, timeout=CHECK_TIMEOUT)
        except httpx.TimeoutException:
            raise SinkUnavailable(f"{self._where()}: no answer within {CHECK_TIMEOUT:.0f}s") from None
        except httpx.TransportError as exc:
            raise SinkUnavailable(f"{self._where()}: {type(exc).__name__}: {exc}") from None
        if response.status_code in (400, 409, 413, 422):
            return  # it answered and did not refuse us: it only has views on the empty batch
        _raise_for(response, self._where(), self._bearer)

    def _where(self) -> str:
        url = httpx.URL(self.url)
        return f"{url.scheme}://{url.host}:{url.port or ''}{url.path}"

    def close(self) -> None:
        self._client.close()


def _raise_for(response: httpx.Response, where: str, bearer: Bearer) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    text = bearer.mask(response.text)
    detail = f"{where} answered {status} {response.reason_phrase}: {text[:200]!r}"
    if status == 409:
        raise StaleEpoch(detail)
    if status == 413:
        raise SinkTooLarge(detail)
    if status in (400, 422):
        raise SinkRejected(detail)
    if status in (401, 403, 404):
        raise SinkPaused(detail)
    raise SinkUnavailable(detail, retry_after=_retry_after(response.headers.get("Retry-After")))


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
