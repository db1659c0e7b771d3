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
from pathlib import Path

import msgspec

import pyarrow as pa

from scoreline.errors import NotFoundError, NotReadyError, SchemaError, ScorelineError
from scoreline.registry.experiments import experiment_stamp
from scoreline.registry.repository import DEFAULT_ALIAS, Repository

from scoreline.engine.data.request import RowBatch
from scoreline.engine.monitor import Monitor, clock, timed
from scoreline.engine.pipeline.deployment import Deployment, open_store
from scoreline.engine.pipeline.logbuffer import LogBuffer, reason_text
from scoreline.engine.pipeline.result import Result
from scoreline.engine.pipeline.routing import Experiments

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
    monitor: watch every deployment's inputs, score and stage times (`engine.monitor`).

    A model with an experiment (registry/experiments.py) routes each request made without a
    version to the variant its entity key splits to, and scores its shadows off the answer's path.
    """

    def __init__(self, registry_root, *, log=None, preload: bool = False,
                 reload_interval: float | None = None, monitor: bool = True) -> None:
        self.repository = Repository(registry_root)
        self._lock = threading.Lock()  # guards the tables below; never held while compiling
        self._deployments: dict[tuple[str, int], Deployment] = {}
        self._failed: dict[tuple[str, int], ScorelineError] = {}
        self._failed_files: dict[tuple[str, int], tuple] = {}  # their files when they failed
        self._compiling: dict[tuple[str, int], threading.Lock] = {}
        self._stores: dict[bytes, object] = {}
        self._log = LogBuffer(log, artifacts=self._artifact_sha256)
        self._closed = False
        self._token = None
        self.monitor = Monitor() if monitor else None
        self._experiments = Experiments(self)
        # model id -> {"versions", "aliases", "latest"}: replaced whole, never edited in place
        self._live: dict[str, dict] = self._scan()
        if not preload:
            self._experiments.load(compile_now=False)
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
                self._failed_files[key] = self._files(model_id, version)
                self._failed[key] = exc
                log.warning("model %r version %s failed to load: %s (at %s)", model_id, version,
                            exc.message, exc.path)
                raise _failure(model_id, version, exc) from exc
            except Exception as exc:
                log.exception("model %r version %s failed to load", model_id, version)
                error = NotReadyError(f"{type(exc).__name__}: {exc}")
                self._failed_files[key] = self._files(model_id, version)
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
        dep = Deployment(manifest, version_dir, version=version, store=store,
                         store_base=self.repository.root)
        if self.monitor is not None:
            self.monitor.watch(dep)
        return dep

    # --- scoring ------------------------------------------------------------------------------

    def score(self, model_id: str, request: dict, version: int | str | None = None) -> dict:
        """Score one entity: `{"<key>": 5973628}` or `{"inputs": {...}}` (optionally with
        "request-id") -> the contract dict. Raises NotFoundError (unknown model, version or
        entity), InputError (a bad value, with its path), SchemaError (a malformed request)."""
        if type(request) is not dict:
            raise SchemaError(f"expected a request object, got {type(request).__name__}", path="$")
        routing = self._experiments.table.get(model_id) if version is None else None
        if routing is not None:  # the variants share the champion's request schema (contract)
            dep = self._experiments.champion(model_id, routing)
            rows = dep.request_schema.parse_request(request, strict=False)
            return self.score_rows(model_id, rows).one()
        started = time.perf_counter()
        clock.start()
        dep = self.deployment(model_id, version)
        rows = dep.request_schema.parse_request(request, strict=False)
        result = timed(dep).run_one(rows)
        logged = time.perf_counter()
        self._log_result(dep, result, rows.request_ids, logged - started)
        if self.monitor is not None:
            if result.errors:  # the one-row run raises at the refused input, before tracking
                self.monitor.refuse(model_id, dep.version, result.errors.values(), reached_model=False)
            if clock.sampled:  # (checked here: an unsampled one-row call makes no call at all)
                self.monitor.stages.record(model_id, dep.version, time.perf_counter() - logged)
        return result.one()

    def score_rows(self, model_id: str, rows: RowBatch, version: int | str | None = None) -> Result:
        """Score raw request rows (a RowBatch: the JSON doors, micro-batched or not) -> the
        typed Result; every row is logged once with its request id (and its experiment role)."""
        started = time.perf_counter()
        clock.start(always=rows.n > 1)
        routing = self._experiments.table.get(model_id) if version is None else None
        if routing is None:
            dep = self.deployment(model_id, version)
            result = timed(dep).score_rows(rows)
            name, parts = None, [(dep, None, result, rows.request_ids)]
        else:
            result, parts = self._experiments.rows(model_id, routing, rows)
            name = routing.name
        logged = time.perf_counter()
        for dep, role, part, ids in parts:
            self._log_result(dep, part, ids, logged - started, name, role)
            if part.n == 1 and part.errors and self.monitor is not None:
                # the one-row run raises at the refused input, before the tracking stage
                self.monitor.refuse(model_id, dep.version, part.errors.values(), reached_model=False)
        if self.monitor is not None and clock.sampled:
            self.monitor.stages.record(model_id, parts[0][0].version, time.perf_counter() - logged)
        return result

    def score_batch(self, model_id: str, batch, version: int | str | None = None,
                    request_ids=None) -> pa.RecordBatch:
        """Score an Arrow batch (RecordBatch or Table) -> the contract columns + `error`, logged."""
        return self.score_arrow(model_id, batch, version, request_ids).to_batch()

    def score_arrow(self, model_id: str, batch, version: int | str | None = None,
                    request_ids=None) -> Result:
        """Score an Arrow batch -> the typed Result, logged."""
        started = time.perf_counter()
        clock.start(always=True)
        routing = self._experiments.table.get(model_id) if version is None else None
        if routing is None:
            dep = self.deployment(model_id, version)
            result = timed(dep).run(batch)
            name = roles = None
        else:
            dep, result, roles, request_ids = self._experiments.batch(model_id, routing, batch,
                                                                      request_ids)
            name = routing.name
        logged = time.perf_counter()
        self._log.batch(dep, result.to_batch(), request_ids, logged - started, name, roles)
        if self.monitor is not None:
            self.monitor.stages.record(model_id, dep.version, time.perf_counter() - logged)
        return result

    def _log_result(self, dep: Deployment, result: Result, request_ids, seconds: float,
                    experiment: str | None = None, role: str | None = None) -> None:
        if self._log.log is None:  # no decision log
            return
        if result.n > _ROW_LOG_LIMIT:
            self._log.batch(dep, result.to_batch(), request_ids, seconds, experiment, role)
            return
        keys, scores, labels, _ = result.pylists()
        errors = result.errors
        log = self._log.row
        fallback = result.extras.get("fallback")  # a remote model's: what answered instead, why
        reasons = result.extras.get("reasons")  # the explain stage's, when asked
        if result.n == 1 and not errors:  # a single request, the usual call: no loop
            log(request_ids[0], dep, keys[0], scores[0], labels[0], seconds,
                fallback[0] if fallback else None, experiment, role,
                None if reasons is None else reason_text(reasons[0]))
            return
        for i in range(result.n):
            error = errors.get(i) if errors else None
            if error is None:
                score, note = scores[i], None
                if fallback:  # a remote model: a decision fallback's row has no score (NaN)
                    note = fallback[i]
                    score = None if score != score else score
                log(request_ids[i], dep, keys[i], score, labels[i], seconds, note, experiment, role,
                    None if reasons is None else reason_text(reasons[i]))
            else:
                log(request_ids[i], dep, keys[i], None, None, seconds, error.message, experiment, role)

    # --- experiments (registry/experiments.py; routing in engine/pipeline/routing.py) ----------

    def experiment(self, model_id: str) -> dict | None:
        """The experiment routing `model_id`'s requests now (None: the default version answers)."""
        routing = self._experiments.table.get(model_id)
        if routing is None:
            return None
        described = routing.describe()
        if described["routes"][0]["version"] is None:  # following the default version
            described["routes"][0]["version"] = self._resolve(model_id, None)
        return described

    def routes(self, model_id: str) -> bool:
        """Whether requests for `model_id` without a version are routed by an experiment."""
        return model_id in self._experiments.table

    def set_experiment(self, model_id: str, experiment: dict, message: str = "") -> dict:
        """Compile and warm the experiment's versions, record it in the registry, route by it;
        requests in flight finish on the routing they started with."""
        self._experiments.set(model_id, experiment, message or "set through the engine")
        return self.experiment(model_id)

    def set_canary(self, model_id: str, version: int | None = None, share: float | None = None,
                   *, rollback: bool = False, message: str = "") -> dict | None:
        """Raise the canary's share (starting one if needed) or roll it back a step."""
        self._experiments.canary(model_id, version, share, rollback,
                                 message or "canary through the engine")
        return self.experiment(model_id)

    def stop_experiment(self, model_id: str, message: str = "") -> None:
        """End the model's experiment: its default version answers everything again."""
        self._experiments.stop(model_id, message or "stopped through the engine")

    def figures(self):
        """The monitor's metric families (engine/monitor/figures.py), read at scrape time."""
        from scoreline.engine.monitor import families

        return () if self.monitor is None else families(self.monitor, self._experiments.table)

    def drift(self, model_id: str | None = None) -> list[dict]:
        """Data quality and drift per watched version (see `engine.monitor.drift_report`)."""
        from scoreline.engine.monitor import drift_report

        return [] if self.monitor is None else drift_report(self.monitor, model_id)

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
                elif state == "ready":  # the kernel choice this server made at load (engine/models/tiers.py)
                    item["tiers"] = self._deployments[(model_id, v)].tiers
                # hashes and the registering environment (registry/provenance.py); None before it was kept
                item["provenance"] = self.repository.provenance(model_id, v)
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
                        "contract": contract, "experiment": self.experiment(model_id)})
        return out

    def reload(self) -> None:
        """Rescan the registry; compile and warm every live version not compiled yet, then swap
        the alias table in one assignment. A version that fails to load stays failed (visible in
        `models()`) and never replaces a working one; versions that failed before are tried again."""
        self._failed.clear()  # a retry: the store or the artifact may have been fixed since
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
        self._experiments.load(compile_now=True)

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
        """Whether every live version was loaded: compiled and warmed, or failed (`failures()`
        names those; the others serve)."""
        loaded = self._deployments.keys() | self._failed.keys()
        return all((model_id, v) in loaded
                   for model_id, entry in self._live.items() for v in _live_versions(entry)) \
            and all((model_id, r.version) in loaded  # shadows compile off the path
                    for model_id, routing in self._experiments.table.items()
                    for r in routing.routes if r.version is not None)

    def failures(self) -> list[dict]:
        """The live versions that failed to load: model id, version and the reason."""
        return [{"model-id": model_id, "version": v, "reason": self._failed[(model_id, v)].message}
                for model_id, entry in sorted(self._live.items()) for v in sorted(_live_versions(entry))
                if (model_id, v) in self._failed]

    def close(self) -> None:
        """Stop watching the registry and flush (and, if it is ours, close) the decision log."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._stop.set()
            self._watcher.join(timeout=5)
        self._experiments.pool.close()
        self._log.close()
        for store in self._stores.values():
            close = getattr(store, "close", None)
            if close is not None:
                close()

    def flush(self) -> None:
        """Write every decision logged so far (the shadows' queued rows too) to the decision log."""
        self._experiments.pool.drain()
        self._log.flush()

    def on_logged(self, callback) -> bool:
        """Call `callback()` (from the log's writer thread) once every decision logged so far is
        committed; False when there is no decision log (durable answers, server/app.py)."""
        return self._log.on_committed(callback)

    @property
    def durable_pending(self) -> bool:
        """Whether a decision of a version whose manifest sets `log.durable` may be uncommitted."""
        return self._log.durable_pending

    # --- internals ----------------------------------------------------------------------------

    def _artifact_sha256(self, model_id: str, version: int) -> str | None:
        """A compiled version's artifact hash (the decision log's column; golden.py computes it)."""
        dep = self._deployments.get((model_id, version))
        return None if dep is None else dep.artifact_sha256

    def _scan(self) -> dict[str, dict]:
        self._token = self._state()
        return {model_id: self._scan_one(model_id) for model_id in self.repository.model_ids()}

    def _state(self) -> tuple:
        """What the watcher compares: versions, aliases and experiments of every model."""
        return self.repository.state_token(), experiment_stamp(self.repository)

    def _scan_one(self, model_id: str) -> dict:
        versions = self.repository.versions(model_id)
        return {"versions": versions, "aliases": self.repository.aliases(model_id),
                "latest": versions[-1] if versions else None}

    def _files(self, model_id: str, version: int) -> tuple:
        """Size and mtime of a version's files and of its entity store's files: a failed version
        is tried again when they change (a store file truncated, then restored)."""
        paths = []
        try:
            folder = self.repository.version_dir(model_id, version)
            paths = sorted(folder.rglob("*"))
            spec = self.repository.load_manifest(model_id, version).entity.store
            store_path = getattr(spec, "path", None)  # file stores have one; None without a store
            if store_path:
                store = Path(store_path).expanduser()
                store = store if store.is_absolute() else self.repository.root / store
                paths += sorted(store.parent.glob(store.name)) if any(c in store.name for c in "*?[") else [store]
        except Exception:  # a half-written version or manifest: its stamp is what could be read
            pass
        stamps: list[tuple[str, int | None, int | None]] = []
        for path in paths:
            try:
                st = path.stat()
                stamps.append((str(path), st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((str(path), None, None))
        return tuple(stamps)

    def _failed_changed(self) -> bool:
        return any(self._files(*key) != files for key, files in list(self._failed_files.items())
                   if key in self._failed)

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self._state() != self._token or self._failed_changed():
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
