"""A model another server evaluates, over the Open Inference Protocol v2 (REST), behind the same
`predict_matrix` interface as local models, plus `predict_rows`, which says per row where each
value came from (the remote, a fallback version, a fixed decision, or an error).

Feature preparation and decisions stay ours: the plan fills one column per input tensor (named as
the tensor; model.features maps it from a column), each micro-batch goes out as one request, and
the answer's output tensor comes back as the raw prediction the manifest's decision reads.

Resilience, in the order a call meets it:
- deadline: a call never outlives min(now + timeout, the caller's deadline); each attempt gets
  what is left, and a backoff sleep never crosses it;
- retries with full-jitter exponential backoff, only of what is safe to repeat: a connection that
  never opened, 502/503/504 (the gateway or server did not process it), and, when the remote is
  declared idempotent (inference is), a connection reset or read timeout after sending;
  never a 4xx (our request is wrong; a repeat would be too);
- a circuit breaker per remote: `failures` failed calls in a row open it; while open, calls fail
  at once; after `reset` seconds one probe goes through (half-open) and its result closes or
  re-opens it. A 4xx answer is not the remote's failure and does not count;
- the declared fallback for every row the remote did not score: another local version of this
  model (its features must be among ours), a fixed decision with no score, or a per-row error of
  kind "remote". Never a made-up score.
Secrets come from the environment (`token-env`, `headers-env`), never the manifest. Connections
are pooled: one httpx.Client per remote origin, shared by every model that calls it.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import numpy as np

from scoreline.errors import RegistrationError, ScorelineError
from scoreline.registry import manifest as M

from scoreline.engine.models.breaker import CircuitBreaker

__all__ = ["RemoteModel", "RemoteError", "Outcome", "load_remote"]

_EPOCH = dt.date(1970, 1, 1)
_RETRY_STATUS = frozenset((502, 503, 504))
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


class RemoteError(ScorelineError):
    """A remote model did not score a row: down, slow, refusing, or its breaker is open."""

    kind = "remote"


@dataclass
class Outcome:
    """`predict_rows`' answer. `values`: (n,) or (n, k), NaN where no model scored the row.
    `source[i]`: "remote", "fallback-version", "fallback-decision" or "error". `errors`: row ->
    RemoteError for rows not scored by the remote (why it did not). `decision`: the fixed
    decision of a decision fallback."""

    values: np.ndarray
    source: np.ndarray
    errors: dict[int, RemoteError]
    decision: str | None = None


class _Response(msgspec.Struct):
    outputs: list[dict[str, Any]]


_decode_response = msgspec.json.Decoder(_Response).decode
_encode = msgspec.json.Encoder().encode


def _client(origin: str):
    """The pooled HTTP client for one remote origin (scheme://host:port)."""
    import httpx

    with _clients_lock:
        client = _clients.get(origin)
        if client is None:
            client = _clients[origin] = httpx.Client(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32), trust_env=False)
        return client


class RemoteModel:
    """A v2 REST model (see the module docstring); built by `load_remote` from a manifest."""

    kind = "remote"
    tier = "remote"

    def __init__(self, spec: M.RemoteSpec, *, fallback=None, fallback_version: int | None = None,
                 clock=time.monotonic) -> None:
        import httpx

        self.spec = spec
        self.feature_names = tuple(t.name for t in spec.inputs)
        self.num_features = len(self.feature_names)
        self.num_class = spec.num_class
        self.objective = spec.objective
        self.categories = {j: tuple(t.categories) for j, t in enumerate(spec.inputs) if t.categories}
        base = spec.url.rstrip("/")
        path = f"/v2/models/{spec.name}" + (f"/versions/{spec.version}" if spec.version else "")
        self.metadata_url = base + path
        self.infer_url = base + path + "/infer"
        origin = httpx.URL(base)
        self._client = _client(f"{origin.scheme}://{origin.host}:{origin.port or ''}")
        self.breaker = CircuitBreaker(spec.breaker.failures, spec.breaker.reset, clock)
        self._clock = clock
        self.fallback = fallback
        self.fallback_version = fallback_version
        self._fallback_columns = None
        if fallback is not None:
            self._fallback_columns = _fallback_columns(self, fallback, fallback_version)

    def __repr__(self) -> str:
        return f"RemoteModel({self.infer_url!r}, breaker={self.breaker.state!r})"

    # --- the model interface ------------------------------------------------------------------

    def predict_matrix(self, X: np.ndarray, raw_score: bool = False, num_threads=None, out=None,
                       *, deadline: float | None = None) -> np.ndarray:
        """The remote's (or the fallback version's) predictions; raises RemoteError when a row has
        neither (use `predict_rows` to get per-row outcomes instead)."""
        outcome = self.predict_rows(X, deadline=deadline)
        for row, error in outcome.errors.items():
            if outcome.source[row] != "fallback-version":
                raise error
        return outcome.values

    def predict(self, data, raw_score: bool = False, **_) -> np.ndarray:
        """`predict_matrix` over a 2-D array, Arrow table/batch or DataFrame whose columns are
        named as the input tensors (a BYTES tensor of categories takes the strings; a date
        tensor days since 1970-01-01), as local models' `predict` does (engine/models/protocols.py)."""
        from scoreline.engine.data.inputs import to_matrix

        return self.predict_matrix(to_matrix(data, self.feature_names, self.categories))

    def warm(self) -> None:
        """Nothing compiles for a remote; the fallback version warms its kernels."""
        if self.fallback is not None:
            self.fallback.warm()

    def predict_rows(self, X: np.ndarray, *, deadline: float | None = None) -> Outcome:
        """Score `X` (n x num_features, as the plan fills it) with one request; rows the remote
        did not score get the declared fallback. `deadline`: a `time.monotonic()` instant the
        call must not outlive (the caller's wait)."""
        n = X.shape[0]
        shape = (n,) if self.num_class == 1 else (n, self.num_class)
        values = np.full(shape, np.nan)
        source = np.full(n, "remote", dtype=object)
        errors: dict[int, RemoteError] = {}
        sendable, unsendable = self._encodable(X)
        for i, error in unsendable.items():
            errors[i] = error
        rows = np.flatnonzero(sendable)
        if len(rows):
            try:
                values[rows] = self._call(X if len(rows) == n else X[rows], deadline)
            except RemoteError as exc:
                for i in rows.tolist():
                    errors[i] = exc
        if not errors:
            return Outcome(values, source, errors)
        failed = np.fromiter(errors, dtype=np.int64)
        fb = self.spec.fallback
        if isinstance(fb, M.VersionFallback) and self.fallback is not None:
            columns = cast(np.ndarray, self._fallback_columns)  # set whenever a fallback is
            part = np.asfortranarray(X[np.ix_(failed, columns)])
            values[failed] = self.fallback.predict_matrix(part)
            source[failed] = "fallback-version"
        elif isinstance(fb, M.DecisionFallback):
            source[failed] = "fallback-decision"
        else:
            source[failed] = "error"
        return Outcome(values, source, errors, fb.decision if isinstance(fb, M.DecisionFallback) else None)

    # --- the call -----------------------------------------------------------------------------

    def _encodable(self, X: np.ndarray) -> tuple[np.ndarray, dict[int, RemoteError]]:
        """Which rows can be sent: JSON has no NaN, and a string category must be a known one."""
        missing = np.isnan(X).any(axis=1) if X.size else np.zeros(X.shape[0], dtype=bool)
        errors = {}
        for i in np.flatnonzero(missing).tolist():
            j = int(np.flatnonzero(np.isnan(X[i]))[0])
            errors[i] = RemoteError(f"feature {self.feature_names[j]!r} is missing (or an unknown "
                                    f"category) and the remote's {self.spec.inputs[j].datatype} tensor "
                                    "cannot carry that", path=f"$.model.remote.inputs[{j}]")
        for j, cats in self.categories.items():
            codes = X[:, j]
            bad = ~missing & ((codes < 0) | (codes >= len(cats)))
            for i in np.flatnonzero(bad).tolist():
                errors.setdefault(i, RemoteError(f"feature {self.feature_names[j]!r} is not one of the "
                                                 "remote tensor's categories", path=f"$.model.remote.inputs[{j}]"))
        ok = np.ones(X.shape[0], dtype=bool)
        ok[list(errors)] = False
        return ok, errors

    def _body(self, X: np.ndarray) -> bytes:
        n = X.shape[0]
        spec = self.spec
        if spec.matrix is not None:
            k = self.num_features
            block = X[:, :k] if spec.inputs[0].datatype.startswith("FP") else X[:, :k].astype(np.int64)
            tensors = [{"name": spec.matrix, "shape": [n, k], "datatype": spec.inputs[0].datatype,
                        "data": np.ascontiguousarray(block).ravel().tolist()}]
            return _encode({"id": uuid.uuid4().hex, "inputs": tensors, "outputs": [{"name": spec.output}]})
        tensors = []
        for j, t in enumerate(self.spec.inputs):
            column = X[:, j]
            if t.categories is not None:
                data = [t.categories[int(c)] for c in column.tolist()]
            elif t.date:
                data = [(_EPOCH + dt.timedelta(days=int(d))).isoformat() for d in column.tolist()]
            elif t.datatype in ("INT64", "INT32"):
                data = column.astype(np.int64).tolist()
            elif t.datatype == "BOOL":
                data = (column != 0).tolist()
            else:
                data = column.tolist()
            tensors.append({"name": t.name, "shape": [n], "datatype": t.datatype, "data": data})
        return _encode({"id": uuid.uuid4().hex, "inputs": tensors,
                        "outputs": [{"name": self.spec.output}]})

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.spec.token_env:
            token = os.environ.get(self.spec.token_env)
            if token is None:
                raise RemoteError(f"environment variable {self.spec.token_env!r} (the remote's bearer "
                                  "token) is not set", path="$.model.remote.token-env")
            headers["authorization"] = f"Bearer {token}"
        for name, var in self.spec.headers_env.items():
            value = os.environ.get(var)
            if value is None:
                raise RemoteError(f"environment variable {var!r} (header {name!r}) is not set",
                                  path=f"$.model.remote.headers-env.{name}")
            headers[name] = value
        return headers

    def _call(self, X: np.ndarray, deadline: float | None) -> np.ndarray:
        """One request for the batch, with retries, under the breaker; raises RemoteError."""
        spec = self.spec
        if not self.breaker.allow():
            raise RemoteError(f"remote model {spec.name!r} is unavailable: its circuit breaker is open "
                              "after repeated failures", path="$.model.remote")
        stop = self._clock() + spec.timeout
        if deadline is not None:
            stop = min(stop, deadline)
        body, headers = self._body(X), self._headers()
        counts = True   # does this failure count against the remote (a 4xx does not)
        attempt = 0
        while True:
            attempt += 1
            left = stop - self._clock()
            if left <= 0:
                reason = "the deadline passed before it answered"
                break
            retry, reason, counts, result = self._attempt(body, headers, left, X.shape[0])
            if result is not None:
                self.breaker.record(True)
                return result
            if not retry or attempt >= spec.retry.attempts:
                break
            pause = random.uniform(0, min(spec.retry.max_backoff, spec.retry.backoff * 2 ** (attempt - 1)))
            if self._clock() + pause >= stop:
                break
            time.sleep(pause)
        if counts:
            self.breaker.record(False)
        else:
            self.breaker.record(True)   # the remote answered; our request was at fault
        raise RemoteError(f"remote model {spec.name!r} at {self.infer_url} did not score the batch "
                          f"({reason}; {attempt} attempt{'s' if attempt > 1 else ''})", path="$.model.remote")

    def _attempt(self, body: bytes, headers: dict, left: float, n: int):
        """(retry?, reason, counts against the remote?, values or None) for one request."""
        import httpx

        try:
            response = self._client.post(self.infer_url, content=body, headers=headers,
                                         timeout=httpx.Timeout(left))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return True, f"cannot connect: {type(exc).__name__}", True, None
        except httpx.TimeoutException:
            return self.spec.idempotent, f"no answer within {left * 1000:.0f} ms", True, None
        except httpx.TransportError as exc:   # reset or closed after the request went out
            return self.spec.idempotent, f"connection lost: {type(exc).__name__}", True, None
        if response.status_code != 200:
            code = response.status_code
            detail = " ".join(response.text[:200].split())
            return code in _RETRY_STATUS, f"HTTP {code}: {detail}", code >= 500, None
        try:
            return False, "", True, self._values(response.content, n)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            return False, f"an answer that does not fit the manifest: {exc}", True, None

    def _values(self, content: bytes, n: int) -> np.ndarray:
        outputs = _decode_response(content).outputs
        tensor = next((o for o in outputs if o.get("name") == self.spec.output), None)
        if tensor is None:
            raise ValueError(f"no output tensor {self.spec.output!r}")
        data = tensor.get("data")
        if data and isinstance(data[0], list):
            data = [x for row in data for x in row]
        values = np.asarray(data, dtype=np.float64)
        if values.size != n * self.num_class:
            raise ValueError(f"{values.size} values for {n} rows of {self.num_class} output(s)")
        return values if self.num_class == 1 else values.reshape(n, self.num_class)

    # --- the registration check ---------------------------------------------------------------

    def check_endpoint(self, timeout: float = 5.0) -> dict:
        """The endpoint answers its metadata, and our tensors and output are among its own with
        the same datatypes; returns the metadata. Raises RegistrationError saying what differs."""
        import httpx

        try:
            response = self._client.get(self.metadata_url, headers=self._headers(), timeout=timeout)
        except httpx.HTTPError as exc:
            raise RegistrationError(f"the remote model's metadata at {self.metadata_url} cannot be "
                                    f"read: {exc}", path="$.model.remote.url") from None
        if response.status_code != 200:
            raise RegistrationError(f"the remote model's metadata at {self.metadata_url} answered "
                                    f"HTTP {response.status_code}", path="$.model.remote.url")
        meta = msgspec.json.decode(response.content)
        theirs = {t.get("name"): t.get("datatype") for t in meta.get("inputs") or []}
        ours = self.spec.inputs
        if self.spec.matrix is not None:   # one tensor: its name and datatype must match
            ours = [M.RemoteTensor(name=self.spec.matrix, datatype=self.spec.inputs[0].datatype)]
        for i, t in enumerate(ours):
            if t.name not in theirs:
                raise RegistrationError(f"the remote model has no input tensor {t.name!r} (its inputs: "
                                        f"{', '.join(map(str, theirs))})", path=f"$.model.remote.inputs[{i}]")
            if theirs[t.name] != t.datatype:
                raise RegistrationError(f"input tensor {t.name!r} is {theirs[t.name]} at the remote, "
                                        f"{t.datatype} in the manifest", path=f"$.model.remote.inputs[{i}]")
        outputs = {t.get("name"): t.get("datatype") for t in meta.get("outputs") or []}
        if self.spec.output not in outputs:
            raise RegistrationError(f"the remote model has no output tensor {self.spec.output!r}",
                                    path="$.model.remote.output")
        if outputs[self.spec.output] not in ("FP64", "FP32", "FP16", "INT64", "INT32"):
            raise RegistrationError(f"output tensor {self.spec.output!r} is {outputs[self.spec.output]}, "
                                    "not numbers", path="$.model.remote.output")
        return meta


def _fallback_columns(model: RemoteModel, fallback, version) -> np.ndarray:
    """Where the fallback version's features are among the remote's (refused if they are not)."""
    where = f"$.model.remote.fallback (version {version})"
    ours = {name: j for j, name in enumerate(model.feature_names)}
    missing = [f for f in fallback.feature_names if f not in ours]
    if missing:
        raise RegistrationError(f"the fallback model needs feature {missing[0]!r}, which is not among "
                                f"the remote's input tensors", path=where)
    if fallback.num_class != model.num_class or fallback.objective.split()[0] != model.objective:
        raise RegistrationError(f"the fallback model ({fallback.objective}, {fallback.num_class} "
                                f"output(s)) does not answer like the remote ({model.objective}, "
                                f"{model.num_class})", path=where)
    columns = np.array([ours[f] for f in fallback.feature_names], dtype=np.int64)
    for k, j in enumerate(columns.tolist()):
        if tuple(fallback.categories.get(k, ())) != tuple(model.categories.get(j, ())):
            raise RegistrationError(f"the fallback model's categories for {model.feature_names[j]!r} "
                                    "differ from the remote tensor's", path=where)
    return columns


def load_remote(spec: M.ModelSpec, version_dir, load_local) -> RemoteModel:
    """The RemoteModel for a manifest's `model` section; a version fallback is loaded with
    `load_local(model_spec, version_dir)` from `<version_dir>/../<version>/manifest.json`."""
    from pathlib import Path

    remote = cast(M.RemoteSpec, spec.remote)  # format "remote", which the manifest gives a spec
    fallback = None
    version = None
    if isinstance(remote.fallback, M.VersionFallback):
        version = remote.fallback.version
        folder = Path(version_dir).parent / str(version)
        path = folder / "manifest.json"
        if not path.is_file():
            raise RegistrationError(f"the fallback version {version} is not in the registry",
                                    path="$.model.remote.fallback.version")
        other = M.decode_manifest(path.read_bytes())
        if other.model.format == "remote":
            raise RegistrationError(f"the fallback version {version} is itself remote; a fallback "
                                    "must score locally", path="$.model.remote.fallback.version")
        fallback = load_local(other.model, folder)
    return RemoteModel(remote, fallback=fallback, fallback_version=version)
