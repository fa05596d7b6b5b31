"""mlflow+http(s)://host:port[/prefix][?experiment=NAME]: an MLflow tracking server, over its REST API.

Layout in MLflow: experiment NAME (default "distwal", created if missing); one parent run
per distwal run id (run name = the run id, tag `distwal.run`); under it one child run per
writer (tags `mlflow.parentRunId`, `distwal.writer`, `distwal.rank`, `distwal.host`,
`distwal.attempt`), found again by tag after a leader change. A writer's run is ended
when it retires: FINISHED, FAILED (exception, exit) or KILLED (signal, lost).

What a record becomes:

- every top-level int or float field (not bool), with nested mappings flattened by `/`
  (`{"train": {"loss": 1}}` -> metric `train/loss`), is one metric point; the strings
  "NaN", "Infinity" and "-Infinity" (how log() keeps non-finite floats) are those floats
  (MLflow's SQL store then keeps NaN, and an infinity as the largest double of its sign);
- step = the record's integer `step` field, else its seq; timestamp = the record's numeric
  `ts` field (unix seconds), else the time of its log() call, in ms. `step` and `ts` are
  not metrics themselves;
- `mlflow.metrics`, `mlflow.params` and `mlflow.tags` mappings (what the tee in
  distwal.integrations.mlflow writes) become metrics, params and tags of the writer's run,
  their keys taken as they are;
- every other field (strings, bools, lists, null) is not sent to MLflow: it stays in the
  WAL until acknowledged and is then gone. Log it to a store sink (sqlite, postgresql) too
  if you need it, or as a tag.

A resent batch stores no point twice: MLflow's SQL store keys a metric row on (run, key,
timestamp, step, value) and log-batch skips rows it already holds (tests/contract/
test_sink_mlflow.py checks this against a real server); params are write-once there (the
same value again is a no-op) and tags are overwritten. Two records of one writer with the
same key, step, value and millisecond are therefore one point, as in MLflow itself.

MLflow cannot fence a stale leader: a batch from an old epoch is stored like any other.
Runs are created by a protocol that leaves one run per writer even when two leaders race
(see _RunFinder). Token: DISTWAL_TOKEN is sent as a bearer token, never logged.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Iterable, Iterator, Mapping, TypeGuard
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson

from .._exceptions import ConfigError, SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable
from ._base import Batch, Chunk, Sink
from ._bearer import Bearer

logger = logging.getLogger("distwal")

DEFAULT_EXPERIMENT = "distwal"
DEFAULT_TIMEOUT = 30.0  # seconds per request
# MLflow's limits for one log-batch request (mlflow/utils/validation.py).
MAX_METRICS_PER_REQUEST = 1000
MAX_PARAMS_TAGS_PER_REQUEST = 100
MAX_ENTITIES_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 900_000  # below MLflow's 1 MB, leaving room for the JSON around the lists
# What one write() may send: a loaded MLflow takes up to seconds per 1,000 points (measured:
# 0.2-2.7 s on 2 busy cores), and a write() that outlasts the leader's lease loses it. Small
# requests (a few points of one writer's run) take milliseconds.
MAX_POINTS_PER_WRITE = 2000
MAX_REQUESTS_PER_WRITE = 8
RESOLVE_BUDGET = 2.0  # seconds one write() may spend finding (or creating) runs before it asks for a split
# seconds: an unsettled run older than this was left by a leader that died creating it (its
# creator settles it within a few requests); until then the new leader waits, all writers with it.
SETTLE_TIMEOUT = 10.0

TAG_RUN = "distwal.run"
TAG_WRITER = "distwal.writer"
TAG_SETTLED = "distwal.settled"  # set once the run's creator has seen that it is the only one
METRICS, PARAMS, TAGS = "mlflow.metrics", "mlflow.params", "mlflow.tags"  # the tee's record fields
NON_FINITE = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}

# How a writer ended (CONTRACT "Status: how each writer ended") -> the run's final status.
END_STATUS = {"finished": "FINISHED", "exception": "FAILED", "exit": "FAILED", "signal": "KILLED", "lost": "KILLED"}

Entry = dict[str, Any]


class MLflowSink(Sink):
    """Write records as metrics (and the tee's params and tags) into an MLflow tracking server.

        sink = MLflowSink("mlflow+http://127.0.0.1:5000?experiment=exp42")

    Pass `client` (an httpx.Client) to customise transport; `token` overrides DISTWAL_TOKEN.
    """

    scheme = "mlflow"

    def __init__(
        self,
        url: str,
        client: httpx.Client | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        settle_timeout: float = SETTLE_TIMEOUT,
    ) -> None:
        self.url = url
        self.base, self.experiment_name = parse_url(url)
        bearer = Bearer(token, client, timeout)
        self._client = bearer.client
        self._client.headers.update(bearer.headers)
        self._api = _Api(self._client, self.base, bearer)
        self._finder = _RunFinder(self._api, settle_timeout)
        self._experiment_id: str | None = None
        self._parents: dict[str, str] = {}  # distwal run id -> MLflow run id
        self._children: dict[str, str] = {}  # writer id -> MLflow run id

    # -- the Sink interface ------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        try:
            by_writer: dict[str, list[Chunk]] = {}  # a chunk is one WAL block: a writer has many
            for chunk in batch.chunks:
                if len(chunk):
                    by_writer.setdefault(chunk.writer, []).append(chunk)
            bodies: list[dict[str, Any]] = []
            started = time.monotonic()
            for writer, chunks in by_writer.items():
                if writer not in self._children and time.monotonic() - started > RESOLVE_BUDGET and len(batch) > 1:
                    # Finding runs takes a few requests per new writer (a new leader of a
                    # thousand): the runs found so far stay cached, the sender sends halves.
                    raise SinkTooLarge(f"{len(batch)} records of writers new to this leader: send fewer at a time")
                run_id = self._run_of(writer, chunks[0].meta)
                bodies.extend(pack(run_id, (entry for chunk in chunks for entry in entries_of(chunk))))
            points = sum(len(body.get("metrics", ())) for body in bodies)
            if len(batch) > 1 and (points > MAX_POINTS_PER_WRITE or len(bodies) > MAX_REQUESTS_PER_WRITE):
                # The sender renews its lease between writes, not during one: ask it to split.
                raise SinkTooLarge(f"{len(batch)} records make {points} points in {len(bodies)} MLflow requests: "
                                   "send fewer at a time")
            for body in bodies:
                self._api.call("POST", "runs/log-batch", body, record_call=True)
        except _RunGone as exc:
            self._forget()
            raise SinkUnavailable(f"{self._api.where}: {exc}; finding the runs again") from None

    def check(self) -> None:
        """Reach the server and ask for the experiment (absent is fine: it is created on first
        write): SinkUnavailable when unreachable, SinkPaused when it refuses the token or the
        URL is not an MLflow tracking server. Stores nothing."""
        self._api.call("GET", "experiments/get-by-name", params={"experiment_name": self.experiment_name},
                       missing_ok=True)

    def writer_done(self, writer: str, meta: Mapping[str, Any], end: Mapping[str, Any] | None) -> None:
        reason = (end or {}).get("reason", "finished")
        status = END_STATUS.get(reason if isinstance(reason, str) else "", "FINISHED")
        ts = (end or {}).get("ts")
        end_ms = int(ts * 1000) if _is_number(ts) and math.isfinite(ts) else _now_ms()
        try:
            run_id = self._run_of(writer, meta)
            self._api.call("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": end_ms})
        except _RunGone as exc:
            self._forget()
            raise SinkUnavailable(f"{self._api.where}: {exc}; finding the runs again") from None
        self._children.pop(writer, None)

    def close(self) -> None:
        self._client.close()

    # -- runs --------------------------------------------------------------------------------

    def _run_of(self, writer: str, meta: Mapping[str, Any]) -> str:
        found = self._children.get(writer)
        if found is not None:
            return found
        run = meta.get("run") if isinstance(meta.get("run"), str) else None
        run = run or "unknown"
        parent = self._parents.get(run)
        if parent is None:
            parent = self._finder.find_or_create(
                self._experiment(), {TAG_RUN: run}, run_name=run, what=f"the parent run of distwal run {run!r}"
            )
            self._parents[run] = parent
        rank, attempt = meta.get("rank"), meta.get("attempt")
        tags = {
            "mlflow.parentRunId": parent,
            TAG_WRITER: writer,
            "distwal.rank": _tag_value(rank),
            "distwal.host": _tag_value(meta.get("host")),
            "distwal.attempt": _tag_value(attempt),
        }
        name = f"rank-{rank}" if rank is not None else writer
        if attempt:
            name += f"-attempt-{attempt}"
        child = self._finder.find_or_create(
            self._experiment(), {TAG_WRITER: writer}, run_name=name, extra_tags=tags, what=f"the run of writer {writer}"
        )
        self._children[writer] = child
        return child

    def _experiment(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        name = self.experiment_name
        for _ in range(2):  # a second look when another leader created it between our two calls
            got = self._api.call("GET", "experiments/get-by-name", params={"experiment_name": name}, missing_ok=True)
            if got is not None:
                experiment = got.get("experiment", {})
                if experiment.get("lifecycle_stage") == "deleted":
                    raise SinkPaused(
                        f"{self._api.where}: experiment {name!r} is deleted: restore it in MLflow, or name another "
                        "one with ?experiment=NAME in the sink URL"
                    )
                return str(experiment["experiment_id"])
            created = self._api.call("POST", "experiments/create", {"name": name}, exists_ok=True)
            if created is not None:
                logger.info("distwal: created MLflow experiment %r", name)
                return str(created["experiment_id"])
        raise SinkUnavailable(f"{self._api.where}: experiment {name!r} exists and cannot be found: retrying")

    def _forget(self) -> None:
        self._experiment_id = None
        self._parents.clear()
        self._children.clear()


# -- records -> MLflow entries ------------------------------------------------------------------


def entries_of(chunk: Chunk) -> Iterator[tuple[str, Entry]]:
    """("metrics" | "params" | "tags", entry) for every record of the chunk, in seq order."""
    seq = chunk.first_seq
    for ts, line in zip(chunk.ts, chunk.lines):
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise SinkRejected(f"{chunk.writer} seq {seq}: the record is not UTF-8 JSON") from None
        if isinstance(data, dict):
            yield from record_entries(data, seq, ts)
        seq += 1


def record_entries(data: Mapping[str, Any], seq: int, ts: float) -> Iterator[tuple[str, Entry]]:
    """The metric points, params and tags of one record (see the module docstring)."""
    step = data.get("step")
    if type(step) is not int:
        step = seq
    stamp: Any = data.get("ts")
    millis = int((stamp if _is_number(stamp) and math.isfinite(stamp) else ts) * 1000)
    for key, value in data.items():
        if key == PARAMS or key == TAGS:
            if isinstance(value, dict):
                kind = "params" if key == PARAMS else "tags"
                for name, text in value.items():
                    yield kind, {"key": str(name), "value": text if isinstance(text, str) else _json_text(text)}
            continue
        if key == "step" or key == "ts":
            continue
        fields = value.items() if key == METRICS and isinstance(value, dict) else _flatten(key, value)
        for name, number in fields:
            metric = _metric_value(number)
            if metric is not None:
                yield "metrics", {"key": str(name), "value": metric, "timestamp": millis, "step": step}


def _flatten(key: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for inner, nested in value.items():
            yield from _flatten(f"{key}/{inner}", nested)
    else:
        yield key, value


def _metric_value(value: Any) -> float | str | None:
    if isinstance(value, str):
        return NON_FINITE.get(value)
    if not _is_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None  # an int beyond a double's range: not a metric MLflow can hold
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def pack(run_id: str, entries: Iterable[tuple[str, Entry]]) -> Iterator[dict[str, Any]]:
    """log-batch request bodies for `run_id`, each within MLflow's per-request limits."""
    lists: dict[str, list[Entry]] = {"metrics": [], "params": [], "tags": []}
    size = 0
    for kind, entry in entries:
        cost = len(orjson.dumps(entry)) + 1
        full = (
            len(lists["metrics"]) + len(lists["params"]) + len(lists["tags"]) >= MAX_ENTITIES_PER_REQUEST
            or (kind == "metrics" and len(lists["metrics"]) >= MAX_METRICS_PER_REQUEST)
            or (kind != "metrics" and len(lists[kind]) >= MAX_PARAMS_TAGS_PER_REQUEST)
            or size + cost > MAX_REQUEST_BYTES
        )
        if full:
            yield {"run_id": run_id, **{k: v for k, v in lists.items() if v}}
            lists = {"metrics": [], "params": [], "tags": []}
            size = 0
        lists[kind].append(entry)
        size += cost
    if any(lists.values()):
        yield {"run_id": run_id, **{k: v for k, v in lists.items() if v}}


# -- finding runs -------------------------------------------------------------------------------


class _RunFinder:
    """Find a run by tag, or create it, so that racing leaders end up with one run.

    MLflow has no create-if-absent for runs, so the protocol is: look for a settled run (one
    whose creator saw it was alone) and use it; if only unsettled ones exist, wait while they
    are young (a creator is checking) and delete them once they are old (a creator died);
    otherwise create ours, look again, and if any other run appeared delete ours and retry
    (both racers may back off; the random retry_after lets one go first), else mark ours
    settled. A run is settled only after its creator saw no other, and a creator deletes
    only its own unsettled run, so two settled runs for one key cannot both be used.
    """

    def __init__(self, api: _Api, settle_timeout: float) -> None:
        self.api = api
        self.settle_timeout = settle_timeout

    def find_or_create(
        self,
        experiment_id: str,
        key: dict[str, str],
        run_name: str,
        what: str,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        runs = self._search(experiment_id, key)
        settled = [r for r in runs if _tags(r).get(TAG_SETTLED) == "1"]
        if settled:
            return _oldest(settled)
        now = _now_ms()
        young = [r for r in runs if now - int(r["info"].get("start_time", 0)) < self.settle_timeout * 1000]
        if young:
            raise SinkUnavailable(f"{self.api.where}: another leader is creating {what}: waiting",
                                  retry_after=random.uniform(0.2, 1.0))
        for run in runs:  # left unsettled by a leader that died while creating it
            self.api.call("POST", "runs/delete", {"run_id": run["info"]["run_id"]})
        tags = {**key, **(extra_tags or {})}
        created = self.api.call("POST", "runs/create", {
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": now,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        })
        assert created is not None
        mine = str(created["run"]["info"]["run_id"])
        others = [r for r in self._search(experiment_id, key) if r["info"]["run_id"] != mine]
        if others:
            self.api.call("POST", "runs/delete", {"run_id": mine})
            raise SinkUnavailable(f"{self.api.where}: two leaders created {what} at once: retrying",
                                  retry_after=random.uniform(0.2, 1.0))
        self.api.call("POST", "runs/set-tag", {"run_id": mine, "key": TAG_SETTLED, "value": "1"})
        got = self.api.call("GET", "runs/get", params={"run_id": mine})
        if got is None or got["run"]["info"].get("lifecycle_stage") != "active":
            raise SinkUnavailable(f"{self.api.where}: {what} was deleted while it was created: retrying")
        logger.info("distwal: created MLflow run %s for %s", mine, what)
        return mine

    def _search(self, experiment_id: str, key: Mapping[str, str]) -> list[dict[str, Any]]:
        clauses = [f"tags.`{k}` = {_quote(v)}" for k, v in key.items()]
        runs: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            body: dict[str, Any] = {"experiment_ids": [experiment_id], "filter": " and ".join(clauses),
                                    "run_view_type": "ACTIVE_ONLY", "max_results": 100}
            if token:
                body["page_token"] = token
            got = self.api.call("POST", "runs/search", body) or {}
            runs.extend(got.get("runs", []))
            token = got.get("next_page_token")
            if not token:
                return runs


def _tags(run: Mapping[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}


def _oldest(runs: list[dict[str, Any]]) -> str:
    return str(min(runs, key=lambda r: (int(r["info"].get("start_time", 0)), r["info"]["run_id"]))["info"]["run_id"])


def _quote(value: str) -> str:
    """A string literal for MLflow's search filter (it has no escapes: pick the quote that is absent)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise SinkPaused(f"cannot search MLflow for {value!r}: it holds both quote characters; use another run id")


def _tag_value(value: Any) -> str:
    return "" if value is None else str(value)


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- HTTP --------------------------------------------------------------------------------------


class _RunGone(Exception):
    """A run or experiment we cached was deleted: look them up again."""


class _Api:
    """MLflow's REST API (/api/2.0/mlflow/...), with its errors mapped to SinkError."""

    def __init__(self, client: httpx.Client, base: str, bearer: Bearer) -> None:
        self.client = client
        self.root = base.rstrip("/") + "/api/2.0/mlflow/"
        self.bearer = bearer
        url = httpx.URL(base)
        self.where = f"mlflow {url.scheme}://{url.host}:{url.port or ''}{url.path.rstrip('/')}"

    def call(
        self,
        method: str,
        endpoint: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        record_call: bool = False,
        missing_ok: bool = False,
        exists_ok: bool = False,
    ) -> dict[str, Any] | None:
        """The decoded answer; None for RESOURCE_DOES_NOT_EXIST (missing_ok) or _ALREADY_EXISTS (exists_ok).

        record_call: a 400 INVALID_PARAMETER_VALUE refuses the records sent (SinkRejected, so
        the sender bisects to the one at fault); for any other call it is not about a record
        and pauses sending instead, so a misconfiguration never turns records into dead letters.
        """
        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self.client.request(method, self.root + endpoint, content=content, params=params,
                                           headers=headers)
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(f"{self.where}: {endpoint} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise SinkUnavailable(f"{self.where}: {endpoint}: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                answer = response.json() if response.content else {}
            except ValueError:
                raise SinkPaused(f"{self.where}: {endpoint} answered {status} with no JSON: is this an MLflow "
                                 "tracking server (check the URL's prefix)?") from None
            return answer if isinstance(answer, dict) else {}
        code, message = _error_of(response)
        message = self.bearer.mask(message)
        detail = f"{self.where}: {endpoint} answered {status} {code or response.reason_phrase}: {message[:300]!r}"
        if status in (401, 403):
            raise SinkPaused(detail)
        if status == 429 or status >= 500:
            from .http import _retry_after

            raise SinkUnavailable(detail, retry_after=_retry_after(response.headers.get("Retry-After")))
        if code == "RESOURCE_DOES_NOT_EXIST":
            if missing_ok:
                return None
            raise _RunGone(detail)
        if code == "RESOURCE_ALREADY_EXISTS" and exists_ok:
            return None
        if status == 404:
            raise SinkPaused(f"{detail}: is this an MLflow tracking server (check the URL's prefix)?")
        if code == "INVALID_PARAMETER_VALUE" and "'active' state" in message:
            raise _RunGone(detail)  # the run was deleted in MLflow: a new one is made
        if record_call and code == "INVALID_PARAMETER_VALUE":
            raise SinkRejected(detail)
        raise SinkPaused(detail)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text
    if not isinstance(body, dict):
        return "", response.text
    return str(body.get("error_code", "")), str(body.get("message", ""))


def parse_url(url: str) -> tuple[str, str]:
    """(base http(s) URL, experiment name) of an mlflow+http(s):// sink URL; ConfigError if malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mlflow+http", "mlflow+https"):
        raise ConfigError(f"{url!r}: an MLflow sink URL starts with mlflow+http:// or mlflow+https://")
    if not parts.hostname:
        raise ConfigError(f"{url!r}: name the MLflow server, e.g. mlflow+http://mlflow:5000?experiment=exp42")
    if parts.username or parts.password:
        raise ConfigError(f"{url.split('://')[0]}://...: put no credentials in the URL; set DISTWAL_TOKEN instead")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ConfigError(f"{url!r}: the port is not a number from 0 to 65535") from None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"experiment"})
    if unknown:
        raise ConfigError(f"{url!r}: unknown option {unknown[0]!r}; the only one is ?experiment=NAME")
    names = query.get("experiment", [DEFAULT_EXPERIMENT])
    if len(names) != 1 or not names[0].strip():
        raise ConfigError(f"{url!r}: give one non-empty experiment name, e.g. ?experiment=exp42")
    base = f"{scheme.split('+', 1)[1]}://{parts.netloc}{parts.path.rstrip('/')}"
    return base, names[0]
