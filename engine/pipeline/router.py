"""The router: model id + version or alias -> a compiled Deployment, scoring with decision logging.

`Engine(registry_root)` reads the registry's aliases once (and again on `reload()` /
`promote()`), so resolving a request is two dict lookups, never disk I/O. Deployments compile on
first use, or all live ones up front with `preload=True`. A swap (reload, promote) compiles and
warms the new version first, then replaces the alias table in one assignment: a request already
holding the old Deployment finishes on it, and no request ever waits for a compilation it did not
ask for. Every scored row (and every refused one) is logged through the DecisionLog.
"""

from __future__ import annotations

import logging
import threading
import time

import msgspec

import pyarrow as pa

from scoreline.errors import NotFoundError, NotReadyError, SchemaError, ScorelineError
from scoreline.registry.repository import DEFAULT_ALIAS, Repository

from scoreline.engine.data.request import RowBatch
from scoreline.engine.pipeline.deployment import Deployment, open_store
from scoreline.engine.pipeline.logbuffer import LogBuffer, reason_text
from scoreline.engine.pipeline.result import Result

__all__ = ["Engine"]

log = logging.getLogger("scoreline.engine")
# Up to this many rows a result is logged row by row (plain tuples, no Arrow); past it as a batch.
_ROW_LOG_LIMIT = 64


class Engine:
    """Score requests against the models of a registry (see docs/contracts.md).

    Parameters
    ----------
    registry_root: the model repository's folder.
    log: None (no decision log), a DecisionLog URL (`sqlite:///decisions.db`; owned and closed by
        `close()`), or a DecisionLog (flushed, not closed, by `close()`).
    preload: compile and warm every live version (each alias's and each model's latest) now;
        `ready` is True when this returns.
    reload_interval: seconds between checks of the registry for new versions or moved aliases
        (None: only on `reload()`).
    """

    def __init__(self, registry_root, *, log=None, preload: bool = False,
                 reload_interval: float | None = None) -> None:
        self.repository = Repository(registry_root)
        self._lock = threading.Lock()  # guards the tables below; never held while compiling
        self._deployments: dict[tuple[str, int], Deployment] = {}
        self._failed: dict[tuple[str, int], ScorelineError] = {}
        self._compiling: dict[tuple[str, int], threading.Lock] = {}
        self._stores: dict[bytes, object] = {}
        self._log = LogBuffer(log)
        self._closed = False
        self._token = None
        # model id -> {"versions", "aliases", "latest"}: replaced whole, never edited in place
        self._live: dict[str, dict] = self._scan()
        if preload:
            self.reload()
        self._watcher = None
        if reload_interval:
            self._stop = threading.Event()
            self._watcher = threading.Thread(target=self._watch, args=(reload_interval,),
                                             name="scoreline-registry-watch", daemon=True)
            self._watcher.start()

    def __repr__(self) -> str:
        return f"Engine({str(self.repository.root)!r}, models={len(self._live)})"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- resolving ----------------------------------------------------------------------------

    def deployment(self, model_id: str, version: int | str | None = None) -> Deployment:
        """The compiled deployment for `model_id` at `version` (an int, an alias, or None for the
        `production` alias, else the latest version); compiles it on first use."""
        return self._get(model_id, self._resolve(model_id, version))

    def _resolve(self, model_id: str, version) -> int:
        if type(version) is int:
            return version
        if isinstance(version, str) and version.isdigit():
            return int(version)
        entry = self._live.get(model_id)
        if entry is not None:
            if version is None:
                v = entry["aliases"].get(DEFAULT_ALIAS, entry["latest"])
                if v is not None:
                    return v
            elif isinstance(version, str):
                v = entry["aliases"].get(version)
                if v is not None:
                    return v
        # Not in the table read at the last reload: ask the registry itself.
        return self.repository.resolve(model_id, version)

    def _get(self, model_id: str, version: int) -> Deployment:
        key = (model_id, version)
        dep = self._deployments.get(key)
        if dep is not None:
            return dep
        self._check_version(model_id, version)
        failed = self._failed.get(key)
        if failed is not None:
            raise _failure(model_id, version, failed)
        with self._lock:
            compiling = self._compiling.setdefault(key, threading.Lock())
        with compiling:  # one compilation per version; other callers wait for it
            dep = self._deployments.get(key)
            if dep is not None:
                return dep
            if key in self._failed:
                return self._get(model_id, version)
            try:
                manifest = self.repository.load_manifest(model_id, version)
                version_dir = self.repository.version_dir(model_id, version)
            except NotFoundError:
                with self._lock:
                    self._compiling.pop(key, None)  # not a version: nothing to remember
                raise
            try:
                # Anything that fails from here on (a store that is missing included) is this
                # version failing to load.
                dep = self._compile(manifest, version_dir, version)
            except ScorelineError as exc:
                self._failed[key] = exc
                log.warning("model %r version %s failed to load: %s (at %s)", model_id, version,
                            exc.message, exc.path)
                raise _failure(model_id, version, exc) from exc
            except Exception as exc:
                log.exception("model %r version %s failed to load", model_id, version)
                error = NotReadyError(f"{type(exc).__name__}: {exc}")
                self._failed[key] = error
                raise _failure(model_id, version, error) from exc
            self._deployments[key] = dep
            return dep

    def _check_version(self, model_id: str, version: int) -> None:
        """Raise SchemaError (invalid id) or NotFoundError (unknown model or version) unless the
        registry holds this version, so that the failure and compile tables are only ever keyed
        by real versions, never by whatever a client sent."""
        entry = self._live.get(model_id)
        if entry is not None and version in entry["versions"]:
            return
        self.repository.resolve(model_id, version)  # raises; or a version added since the scan

    def _compile(self, manifest, version_dir, version: int) -> Deployment:
        store = False
        spec = manifest.entity.store
        if spec is not None:
            store_key = msgspec.json.encode(spec) + str(self.repository.root).encode()
            with self._lock:
                store = self._stores.get(store_key)
            if store is None:
                store = open_store(spec, self.repository.root)
                with self._lock:
                    store = self._stores.setdefault(store_key, store)
        return Deployment(manifest, version_dir, version=version, store=store,
                          store_base=self.repository.root)

    # --- scoring ------------------------------------------------------------------------------

    def score(self, model_id: str, request: dict, version: int | str | None = None) -> dict:
        """Score one entity: `{"<key>": 5973628}` or `{"inputs": {...}}` (optionally with
        "request-id") -> the contract dict. Raises NotFoundError (unknown model, version or
        entity), InputError (a bad value, with its path), SchemaError (a malformed request)."""
        if type(request) is not dict:
            raise SchemaError(f"expected a request object, got {type(request).__name__}", path="$")
        started = time.perf_counter()
        dep = self.deployment(model_id, version)
        rows = dep.request_schema.parse_request(request, strict=False)
        result = dep.run_one(rows)
        self._log_result(dep, result, rows.request_ids, time.perf_counter() - started)
        return result.one()

    def score_rows(self, model_id: str, rows: RowBatch, version: int | str | None = None) -> Result:
        """Score raw request rows (a RowBatch: the JSON doors, micro-batched or not) -> the
        typed Result; every row is logged once with its request id."""
        started = time.perf_counter()
        dep = self.deployment(model_id, version)
        result = dep.score_rows(rows)
        self._log_result(dep, result, rows.request_ids, time.perf_counter() - started)
        return result

    def score_batch(self, model_id: str, batch, version: int | str | None = None,
                    request_ids=None) -> pa.RecordBatch:
        """Score an Arrow batch (RecordBatch or Table) -> the contract columns + `error`, logged."""
        return self.score_arrow(model_id, batch, version, request_ids).to_batch()

    def score_arrow(self, model_id: str, batch, version: int | str | None = None,
                    request_ids=None) -> Result:
        """Score an Arrow batch -> the typed Result, logged."""
        started = time.perf_counter()
        dep = self.deployment(model_id, version)
        result = dep.run(batch)
        self._log.batch(dep, result.to_batch(), request_ids, time.perf_counter() - started)
        return result

    def _log_result(self, dep: Deployment, result: Result, request_ids, seconds: float) -> None:
        if self._log.log is None:  # no decision log
            return
        if result.n > _ROW_LOG_LIMIT:
            self._log.batch(dep, result.to_batch(), request_ids, seconds)
            return
        keys, scores, labels, _ = result.pylists()
        errors = result.errors
        log = self._log.row
        reasons = result.extras.get("reasons")  # the explain stage's, when asked
        if result.n == 1 and not errors:  # a single request, the usual call: no loop
            log(request_ids[0], dep, keys[0], scores[0], labels[0], seconds, None,
                None if reasons is None else reason_text(reasons[0]))
            return
        for i in range(result.n):
            error = errors.get(i) if errors else None
            if error is None:
                log(request_ids[i], dep, keys[i], scores[i], labels[i], seconds, None,
                    None if reasons is None else reason_text(reasons[i]))
            else:
                log(request_ids[i], dep, keys[i], None, None, seconds, error.message)

    # --- the registry -------------------------------------------------------------------------

    def models(self) -> list[dict]:
        """Every model: id, versions (state: ready, failed, not-loaded), aliases, and the contract
        of its default version (key, score and decision names, inputs)."""
        out = []
        live = self._live
        for model_id, entry in sorted(live.items()):
            versions = []
            for v in entry["versions"]:
                state = "ready" if (model_id, v) in self._deployments else (
                    "failed" if (model_id, v) in self._failed else "not-loaded")
                item = {"version": v, "state": state,
                        "aliases": sorted(a for a, av in entry["aliases"].items() if av == v)}
                if state == "failed":
                    item["error"] = _failure(model_id, v, self._failed[(model_id, v)]).message
                versions.append(item)
            default = entry["aliases"].get(DEFAULT_ALIAS, entry["latest"])
            contract = None
            if default is not None:
                m = self.repository.load_manifest(model_id, default)
                contract = {"key": m.entity.key, "score": m.output.score,
                            "decision": m.output.decision,
                            "inputs": [{"name": i.name, "type": i.type, "required": i.required}
                                       for i in m.inputs]}
            out.append({"model-id": model_id, "versions": versions,
                        "aliases": dict(entry["aliases"]), "default-version": default,
                        "contract": contract})
        return out

    def reload(self) -> None:
        """Rescan the registry; compile and warm every live version not compiled yet, then swap
        the alias table in one assignment. A version that fails to load stays failed (visible in
        `models()`) and never replaces a working one."""
        live = self._scan()
        old = self._live
        for model_id, entry in live.items():
            before = old.get(model_id, {"aliases": {}, "latest": None})
            targets = list(entry["aliases"].items())
            if DEFAULT_ALIAS not in entry["aliases"]:
                targets.append((None, entry["latest"]))  # what a request without version gets
            for alias, v in targets:
                if v is None:
                    continue
                try:
                    self._get(model_id, v)
                except ScorelineError:
                    # Recorded in _failed and shown by models(); the version that was live keeps
                    # serving under this name.
                    previous = before["aliases"].get(alias) if alias else before["latest"]
                    if previous is not None and (model_id, previous) in self._deployments:
                        if alias:
                            entry["aliases"][alias] = previous
                        else:
                            entry["latest"] = previous
        self._live = live

    def promote(self, model_id: str, version: int | str, alias: str = DEFAULT_ALIAS,
                message: str = "") -> int:
        """Compile and warm `version`, then point `alias` at it (in the registry and here)."""
        v = self.repository.resolve(model_id, version)
        self._get(model_id, v)
        self.repository.promote(model_id, v, alias, message or "promoted through the engine")
        with self._lock:
            live = dict(self._live)
            entry = live.get(model_id) or self._scan_one(model_id)
            entry = {**entry, "aliases": {**entry["aliases"], alias: v}}
            live[model_id] = entry
            self._live = live
        return v

    @property
    def ready(self) -> bool:
        """Whether every live version is compiled and warmed."""
        return all((model_id, v) in self._deployments
                   for model_id, entry in self._live.items() for v in _live_versions(entry))

    def close(self) -> None:
        """Stop watching the registry and flush (and, if it is ours, close) the decision log."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._stop.set()
            self._watcher.join(timeout=5)
        self._log.close()
        for store in self._stores.values():
            close = getattr(store, "close", None)
            if close is not None:
                close()

    def flush(self) -> None:
        """Write every decision logged so far to the decision log."""
        self._log.flush()

    # --- internals ----------------------------------------------------------------------------

    def _scan(self) -> dict[str, dict]:
        self._token = self.repository.state_token()
        return {model_id: self._scan_one(model_id) for model_id in self.repository.model_ids()}

    def _scan_one(self, model_id: str) -> dict:
        versions = self.repository.versions(model_id)
        return {"versions": versions, "aliases": self.repository.aliases(model_id),
                "latest": versions[-1] if versions else None}

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self.repository.state_token() != self._token:
                    self.reload()
            except Exception:  # a half-written registry: try again next time
                continue


def _failure(model_id: str, version: int, exc: ScorelineError) -> NotReadyError:
    """What a client is told about a version that failed to load: its kind, never the detail
    (which may name the server's files; the server log has it)."""
    where = f" at {exc.path}" if exc.path and exc.path.startswith("$") else ""
    return NotReadyError(f"model {model_id!r} version {version} failed to load ({exc.kind} "
                         f"error{where}); the server log has the detail", path=exc.path if where else None)


def _live_versions(entry: dict) -> set[int]:
    """The versions requests can reach without naming a number: every alias's target, and the
    latest version when there is no production alias."""
    live = set(entry["aliases"].values())
    if DEFAULT_ALIAS not in entry["aliases"] and entry["latest"] is not None:
        live.add(entry["latest"])
    return live
