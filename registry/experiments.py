"""Experiments as registry metadata: a champion, challengers and a canary with traffic shares, and
shadow versions, per model in ``<root>/<model-id>/experiment.json``; every change is recorded in
the model's history. ``split`` assigns rows to variants by a stable hash of the entity key salted
with the experiment's name, so an entity always sees the same variant and no client header is needed.

Roles: ``champion`` (answers the rest of the traffic), ``challenger`` and ``canary`` (answer their
share), ``shadow`` (scored on the same rows, logged, never answered).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Sequence

import msgspec
import numpy as np
import pyarrow as pa

from scoreline.errors import NotFoundError, SchemaError

from .files import fsync_path, write_synced
from .repository import Repository

__all__ = ["Experiment", "Variant", "Route", "load_experiment", "set_experiment", "set_canary",
           "stop_experiment", "experiment_stamp", "split", "split_one"]

_FILE = "experiment.json"
_STRICT = dict(frozen=True, forbid_unknown_fields=True, rename="kebab")
_M64 = (1 << 64) - 1
# Shares are kept to 1e-4 (a basis point): declared shares are whole percentages in practice, and
# rounding here keeps "0.1 + 0.2" from adding up to more than 0.3 in the checks below.
_ROUND = 4


class Variant(msgspec.Struct, **_STRICT):
    """A version answering `share` (0..1) of the entities."""

    version: int
    share: float


class Experiment(msgspec.Struct, **_STRICT):
    """One model's experiment: the champion answers what the challengers and canary do not.
    `champion` None (the default): whatever version answers the model's requests without a
    version (the `production` alias, else the latest), so a promotion moves it; a number pins it."""

    name: str
    champion: int | None = None
    challengers: list[Variant] = []
    shadows: list[int] = []
    canary: Variant | None = None

    def routes(self) -> list[Route]:
        """The answering variants, champion first (version None: the default version), with
        their shares (adding up to 1)."""
        others = [Route(v.version, "challenger", v.share) for v in self.challengers]
        if self.canary is not None and self.canary.share > 0:
            others.append(Route(self.canary.version, "canary", self.canary.share))
        rest = round(1.0 - sum(r.share for r in others), _ROUND)
        return [Route(self.champion, "champion", rest), *others]


class Route(msgspec.Struct, frozen=True):
    version: int | None
    role: str
    share: float


_decode = msgspec.json.Decoder(Experiment).decode


def load_experiment(repo: Repository, model_id: str) -> Experiment | None:
    """The model's experiment, or None when it has none."""
    path = repo._model_dir(model_id) / _FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return _decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SchemaError(f"{path} is not a valid experiment: {exc}", path=str(path)) from None


def experiment_stamp(repo: Repository) -> tuple:
    """A cheap value that changes whenever any model's experiment file is written or removed."""
    stamp = []
    for model_id in repo.model_ids():
        try:
            st = os.stat(repo.root / model_id / _FILE)
        except FileNotFoundError:
            continue
        stamp.append((model_id, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


def set_experiment(repo: Repository, model_id: str, experiment: Experiment | dict,
                   message: str = "") -> Experiment:
    """Check and write `experiment` (replacing any earlier one); recorded as `experiment-set`.

    SchemaError when a share is outside 0..1 or they add up to more than 1, a version appears
    twice, or a variant's answer contract (key, score, decision and their kinds) differs from the
    champion's; NotFoundError for a version the registry lacks.
    """
    if isinstance(experiment, dict):
        try:
            experiment = msgspec.convert(experiment, Experiment)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"invalid experiment: {exc}", path="$") from None
    _check(repo, model_id, experiment)
    with repo._lock(model_id):
        _write(repo, model_id, experiment)
        repo._append_history(model_id, "experiment-set", experiment.champion, None, None, message,
                             experiment=msgspec.to_builtins(experiment))
    return experiment


def set_canary(repo: Repository, model_id: str, version: int | None = None,
               share: float | None = None, *, rollback: bool = False,
               message: str = "") -> Experiment:
    """Raise (or lower) the canary's share, or with `rollback` return it to its previous share
    (the history is the undo stack; past the first step the canary is removed). Without an
    experiment, one named `<model-id>-canary` is started with the production version as champion.
    """
    current = load_experiment(repo, model_id)
    if rollback:
        if current is None or current.canary is None:
            raise NotFoundError(f"model {model_id!r} has no canary to roll back", path="canary")
        steps = [e["experiment"]["canary"]["share"] for e in repo.history(model_id)
                 if e["action"] in ("canary", "canary-rolled-back")
                 and (e.get("experiment") or {}).get("canary")
                 and e["experiment"]["canary"]["version"] == current.canary.version]
        earlier = [s for s in steps if s < current.canary.share]
        canary = Variant(current.canary.version, earlier[-1]) if earlier else None
        updated = msgspec.structs.replace(current, canary=canary)
        action = "canary-rolled-back"
    else:
        if share is None:
            raise SchemaError("give the canary's share (0..1)", path="share")
        if current is None:
            current = Experiment(name=f"{model_id}-canary")
        if version is None:
            if current.canary is None:
                raise SchemaError("give the canary's version", path="version")
            version = current.canary.version
        updated = msgspec.structs.replace(current, canary=Variant(int(version), float(share)))
        action = "canary"
    _check(repo, model_id, updated)
    with repo._lock(model_id):
        _write(repo, model_id, updated)
        repo._append_history(model_id, action, version if version is not None else None, None,
                             None, message, experiment=msgspec.to_builtins(updated))
    return updated


def stop_experiment(repo: Repository, model_id: str, message: str = "") -> None:
    """Remove the model's experiment: the production alias answers everything again."""
    path = repo._model_dir(model_id) / _FILE
    with repo._lock(model_id):
        if not path.exists():
            raise NotFoundError(f"model {model_id!r} has no experiment to stop", path="experiment")
        os.unlink(path)
        fsync_path(path.parent)
        repo._append_history(model_id, "experiment-stopped", None, None, None, message)


def _check(repo: Repository, model_id: str, e: Experiment) -> None:
    if not e.name or len(e.name) > 128:
        raise SchemaError("an experiment needs a name of 1-128 characters", path="$.name")
    champion = e.champion if e.champion is not None else repo.resolve(model_id, None)
    versions = [champion, *(v.version for v in e.challengers), *e.shadows]
    if e.canary is not None:
        versions.append(e.canary.version)
    for v in versions:
        repo.resolve(model_id, int(v))  # NotFoundError names the versions there are
    if len(set(versions)) != len(versions):
        raise SchemaError(f"a version appears twice in the experiment ({versions})", path="$")
    shares = [v.share for v in e.challengers] + ([e.canary.share] if e.canary else [])
    for i, s in enumerate(shares):
        if not 0.0 <= s <= 1.0:
            raise SchemaError(f"expected a share between 0 and 1, got {s}", path=f"$.share[{i}]")
    if round(sum(shares), _ROUND) > 1.0:
        raise SchemaError(f"the shares add up to {sum(shares):g}, more than 1", path="$")
    base = _contract(repo, model_id, champion)
    for v in versions[1:]:
        if _contract(repo, model_id, v) != base:
            raise SchemaError(f"version {v} answers a different contract than the champion "
                              f"{champion} (key, score, decision): it cannot share its traffic",
                              path="$")


def _contract(repo: Repository, model_id: str, version: int) -> tuple:
    m = repo.load_manifest(model_id, version)
    decision = m.decision
    return (m.entity.key, m.entity.key_type, m.output.score, m.output.decision,
            type(decision).__struct_config__.tag, getattr(decision, "payload_field", None))


def _write(repo: Repository, model_id: str, e: Experiment) -> None:
    model_dir = repo.root / model_id
    tmp = model_dir / f".tmp-{_FILE}.{uuid.uuid4().hex}"
    write_synced(tmp, json.dumps(msgspec.to_builtins(e), indent=2).encode())
    os.replace(tmp, model_dir / _FILE)
    fsync_path(model_dir)


# --- the split ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _salt(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 (wrapping multiplication is what it wants)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _fnv_strings(arr: pa.Array) -> np.ndarray:
    """FNV-1a of each string's UTF-8 bytes, vectorised over rows (one pass per byte position)."""
    arr = arr.cast(pa.large_string()) if not pa.types.is_large_string(arr.type) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None \
        else np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(arr), 0xCBF29CE484222325, dtype=np.uint64)
    for j in range(int(lengths.max(initial=0))):
        live = lengths > j
        byte = data[np.where(live, starts + j, 0)].astype(np.uint64)
        h = np.where(live, (h ^ byte) * np.uint64(0x100000001B3), h)
    return h


def _hash(keys, salt: int) -> np.ndarray:
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        if pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
            base = _fnv_strings(keys.fill_null(""))
        else:
            base = keys.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
    else:
        keys = np.asarray(keys)
        if keys.dtype.kind in "USO":
            return _hash(pa.array(keys.astype(str).tolist(), pa.string()), salt)
        base = keys.astype(np.int64, copy=False).view(np.uint64)
    with np.errstate(over="ignore"):
        return _mix(_mix(base ^ np.uint64(salt)))


def split(keys, name: str, shares: Sequence[float]) -> np.ndarray:
    """The variant index (into `shares`) of every key: int64 or string keys (numpy or Arrow),
    the same answer for the same key and name on every call and in every process.

    A key's hash, salted with the experiment `name`, is a point in [0, 1) and lands in the share
    whose cumulative interval holds it; shares should add up to 1 (any rest goes to the last).
    """
    with np.errstate(over="ignore"):
        point = (_hash(keys, _salt(name)) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    edges = np.cumsum(np.asarray(shares, dtype=np.float64))[:-1]
    return np.searchsorted(edges, point, side="right").astype(np.int64)


def split_one(key, name: str, shares: Sequence[float]) -> int:
    """`split` for one key without numpy (the one-row path: about a microsecond)."""
    salt = _salt(name)
    if isinstance(key, str):
        h = 0xCBF29CE484222325
        for byte in key.encode():
            h = ((h ^ byte) * 0x100000001B3) & _M64
    else:
        h = int(key) & _M64
    h ^= salt
    for _ in range(2):
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
        h ^= h >> 31
    point = (h >> 11) * (1.0 / (1 << 53))
    total = 0.0
    for i, share in enumerate(shares[:-1]):
        total += share
        if point < total:
            return i
    return len(shares) - 1
