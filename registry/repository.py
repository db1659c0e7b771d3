"""The model repository on disk: integer versions, aliases and a change history per model id.

Layout (like Triton's model repository)::

    <root>/<model-id>/<version>/manifest.json     one folder per registered version, never edited
    <root>/<model-id>/<version>/<artifact>        the file the manifest's model.artifact names
    <root>/<model-id>/aliases.json                {"production": 3, "staging": 4}
    <root>/<model-id>/history.jsonl               one JSON object per change, appended

A version folder appears in one ``os.rename`` of a fully written, validated temporary folder, so a
crash mid-write leaves no visible version; aliases.json is replaced atomically. Two lock files per
model serialize writers across processes: ``.add.lock`` for the (slow) copy-and-validate phase and
``.lock`` for the short read-modify-write of versions, aliases and history, so promoting never
waits for another version's compilation.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import getpass
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from scoreline.errors import NotFoundError, RegistrationError, SchemaError, ScorelineError

from .manifest import Manifest, decode_manifest, encode_manifest

__all__ = ["Repository", "Validator", "DEFAULT_ALIAS", "check_model_id", "check_model_ref",
           "store_base", "MODEL_ID_PATTERN", "VERSION_REF_PATTERN"]

DEFAULT_ALIAS = "production"
Validator = Callable[[Path, Manifest], Any]

# Lowercase, starts with a letter or digit, so ids can never be "." / ".." or a hidden folder,
# and without "/" a model id can never name anything outside the root.
MODEL_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,127}"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9._-]{0,63}"
# What a request may name as a version: an alias or a version number (at most 18 digits).
VERSION_REF_PATTERN = ALIAS_PATTERN + r"|[0-9]{1,18}"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_VERSION = re.compile(r"[1-9][0-9]*")      # the folder names this repository writes
_DIGITS = re.compile(r"[0-9]+")
_TMP_PREFIX = ".tmp-"
_MANIFEST = "manifest.json"
_ALIASES = "aliases.json"
_HISTORY = "history.jsonl"


def check_model_id(model_id: str) -> str:
    """Return ``model_id`` if it is a safe model id, else raise SchemaError saying what is allowed."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise SchemaError(
            f"invalid model id {model_id!r}: expected 1-128 lowercase letters, digits, '-', '_' or "
            "'.', starting with a letter or digit, without '..'",
            path="$.model-id",
        )
    return model_id


def check_model_ref(model_id: object, version: object, *,
                    path: str = "$") -> tuple[str, int | str | None]:
    """A requested model id and version (a number >= 1, its digits, or an alias) as the engine
    takes them; anything else is a SchemaError at `<path>.model-id` or `<path>.model-version`."""
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise SchemaError(
            f"expected a model id (1-128 lowercase letters, digits, '.', '_', '-', starting with a "
            f"letter or digit) at `{path}.model-id`, got {_show(model_id)}", path=f"{path}.model-id")
    if version is None or (type(version) is int and 1 <= version < 2**63):
        return model_id, version
    if isinstance(version, str):
        if _ALIAS.fullmatch(version):
            return model_id, version
        if _DIGITS.fullmatch(version) and len(version) <= 18 and int(version) >= 1:
            return model_id, int(version)
    raise SchemaError(f"expected a version number (>= 1) or an alias at `{path}.model-version`, "
                      f"got {_show(version)}", path=f"{path}.model-version")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias.isdigit():
        raise SchemaError(
            f"invalid alias {alias!r}: expected a name starting with a letter (letters, digits, "
            "'-', '_', '.'; at most 64)",
            path="alias",
        )
    return alias


def store_base(version_dir: str | os.PathLike) -> Path:
    """The folder a version's relative entity-store paths start at: the registry root, for a
    version folder of this repository (also for its temporary folder while `add` validates)."""
    return Path(version_dir).parent.parent


class Repository:
    """A model repository rooted at ``root`` (created on first write).

    Every method takes a model id; a version is a positive int; an alias is a name such as
    ``production`` that points at a version.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r})"

    # --- writing ------------------------------------------------------------------------------

    def add(
        self,
        model_id: str,
        manifest: Manifest | bytes | str | os.PathLike,
        artifact_path: str | os.PathLike,
        message: str = "",
        validate: Validator | None = None,
    ) -> int:
        """Register a new version of ``model_id`` and return its number.

        ``manifest``: a Manifest, its JSON bytes, or the path of a JSON file. ``artifact_path``:
        the model file, copied to the name the manifest's ``model.artifact`` gives.
        ``validate(version_dir, manifest)`` runs on the fully written folder before it becomes
        visible; any exception it raises refuses the version with RegistrationError (the
        repository is left as it was, and the refusal is recorded in the history).
        """
        check_model_id(model_id)
        manifest = _as_manifest(manifest)
        if manifest.model_id != model_id:
            raise SchemaError(
                f"the manifest is for model {manifest.model_id!r}, not {model_id!r}", path="$.model-id"
            )
        artifact_name = _artifact_name(manifest)
        source = Path(artifact_path)
        if not source.is_file():
            raise NotFoundError(f"artifact file {str(source)!r} does not exist", path="artifact")

        model_dir = self.root / model_id
        model_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(model_id, ".add.lock"):
            # Holding the add lock, no other writer can own a temporary folder: any left is stale.
            _remove_temp_dirs(model_dir)
            tmp = model_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                _write_file(tmp / _MANIFEST, msgspec.json.format(encode_manifest(manifest), indent=2))
                target = tmp / artifact_name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                _fsync_path(target)
                if validate is not None:
                    try:
                        validate(tmp, manifest)
                    except Exception as exc:  # any failure refuses the version
                        # the temporary folder's name means nothing to the user: show file names
                        reason = _describe(exc).replace(str(tmp) + os.sep, "").replace(str(tmp), ".")
                        with self._lock(model_id):
                            self._append_history(model_id, "refused", None, None, None, message,
                                                 reason=reason)
                        # the error carries the path itself, so its message does not repeat it
                        detail = reason.replace(f" (at {exc.path})", "") if getattr(
                            exc, "path", None) else reason
                        raise RegistrationError(
                            f"model {model_id!r}: the new version was refused: {detail}",
                            path=getattr(exc, "path", None),
                        ) from exc
                with self._lock(model_id):
                    version = self._next_version(model_id)
                    os.rename(tmp, model_dir / str(version))
                    _fsync_path(model_dir)
                    self._append_history(model_id, "registered", version, None, None, message)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return version

    def promote(self, model_id: str, version: int | str, alias: str = DEFAULT_ALIAS,
                message: str = "") -> int:
        """Point ``alias`` at ``version`` (an int, a digit string or another alias); return it."""
        _check_alias(alias)
        with self._lock(model_id):
            target = self.resolve(model_id, version)
            aliases = self.aliases(model_id)
            previous = aliases.get(alias)
            aliases[alias] = target
            self._write_aliases(model_id, aliases)
            self._append_history(model_id, "promoted", target, alias, previous, message)
        return target

    def rollback(self, model_id: str, alias: str = DEFAULT_ALIAS, message: str = "") -> int:
        """Point ``alias`` back at the version it pointed at before its latest promotion.

        Successive rollbacks walk further back (an undo stack rebuilt from the history);
        NotFoundError when there is nothing earlier to return to.
        """
        _check_alias(alias)
        with self._lock(model_id):
            aliases = self.aliases(model_id)
            if alias not in aliases:
                raise NotFoundError(f"model {model_id!r} has no alias {alias!r} to roll back "
                                    f"(aliases: {_names(aliases)})", path="alias")
            stack = _alias_stack(self.history(model_id), alias)
            current = aliases[alias]
            if len(stack) < 2:
                raise NotFoundError(
                    f"model {model_id!r}: alias {alias!r} has no earlier version to roll back to "
                    f"(it points at version {current})",
                    path="alias",
                )
            target = stack[-2]
            if not (self.root / model_id / str(target)).is_dir():
                raise NotFoundError(f"model {model_id!r}: version {target}, which {alias!r} "
                                    "pointed at before, no longer exists", path="$.model-version")
            aliases[alias] = target
            self._write_aliases(model_id, aliases)
            self._append_history(model_id, "rolled-back", target, alias, current, message)
        return target

    # --- reading ------------------------------------------------------------------------------

    def list(self) -> list[dict]:
        """Every model: ``{"model_id", "versions", "latest", "aliases"}``, sorted by id."""
        out = []
        for model_id in self.model_ids():
            versions = self.versions(model_id)
            out.append({
                "model_id": model_id,
                "versions": versions,
                "latest": versions[-1] if versions else None,
                "aliases": self.aliases(model_id),
            })
        return out

    def model_ids(self) -> list[str]:
        """The ids of the models in the repository, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            e.name for e in os.scandir(self.root)
            if e.is_dir() and _MODEL_ID.fullmatch(e.name) and ".." not in e.name
        )

    def versions(self, model_id: str) -> list[int]:
        """The registered versions of ``model_id``, ascending; NotFoundError for an unknown model."""
        model_dir = self._model_dir(model_id)
        return sorted(int(e.name) for e in os.scandir(model_dir)
                      if _VERSION.fullmatch(e.name) and e.is_dir())

    def aliases(self, model_id: str) -> dict[str, int]:
        """Alias name -> version for ``model_id`` (empty when none is set)."""
        path = self._model_dir(model_id) / _ALIASES
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise SchemaError(f"{path} is not valid JSON: {exc}", path=str(path)) from None
        return {str(k): int(v) for k, v in data.items()}

    def history(self, model_id: str) -> list[dict]:
        """Every recorded change, oldest first.

        Each entry: time (UTC ISO 8601), action (registered, refused, promoted, rolled-back),
        version, alias, previous (the alias's version before the change), message, who, and for
        a refusal the reason.
        """
        path = self._model_dir(model_id) / _HISTORY
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        # A crash mid-append can leave a torn last line; every complete line is kept.
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def show(self, model_id: str) -> dict:
        """One model in full: its versions (with a manifest summary), aliases and history."""
        versions = []
        registered = {e["version"]: e for e in self.history(model_id) if e["action"] == "registered"}
        aliases = self.aliases(model_id)
        for v in self.versions(model_id):
            m = self.load_manifest(model_id, v)
            entry = registered.get(v, {})
            versions.append({
                "version": v,
                "format": m.model.format,
                "artifact": m.model.artifact,
                "inputs": [i.name for i in m.inputs],
                "entity_key": m.entity.key,
                "outputs": [m.output.score, m.output.decision],
                "decision": type(m.decision).__struct_config__.tag,
                "description": m.description,
                "registered": entry.get("time"),
                "message": entry.get("message", ""),
                "aliases": sorted(a for a, av in aliases.items() if av == v),
            })
        return {"model_id": model_id, "versions": versions, "aliases": aliases,
                "history": self.history(model_id)}

    def resolve(self, model_id: str, version_or_alias: int | str | None = None) -> int:
        """The version number meant by ``version_or_alias``.

        None: the ``production`` alias if set, else the latest version; an int or a digit string:
        that version; any other string: that alias. NotFoundError names what was asked for and
        what exists.
        """
        versions = self.versions(model_id)
        if version_or_alias is None:
            aliases = self.aliases(model_id)
            if DEFAULT_ALIAS in aliases:
                return self._existing(model_id, aliases[DEFAULT_ALIAS], versions,
                                      f"alias {DEFAULT_ALIAS!r} -> ")
            if not versions:
                raise NotFoundError(f"model {model_id!r} has no registered versions", path="$.model-version")
            return versions[-1]
        if isinstance(version_or_alias, bool):
            raise SchemaError(f"expected a version number or an alias, got {version_or_alias!r}",
                              path="$.model-version")
        if isinstance(version_or_alias, int) or (
            isinstance(version_or_alias, str) and _DIGITS.fullmatch(version_or_alias)
        ):
            return self._existing(model_id, int(version_or_alias), versions, "")
        if not isinstance(version_or_alias, str):
            raise SchemaError(f"expected a version number or an alias, got {version_or_alias!r}",
                              path="$.model-version")
        aliases = self.aliases(model_id)
        if version_or_alias not in aliases:
            raise NotFoundError(
                f"model {model_id!r} has no version or alias {version_or_alias!r} "
                f"(versions: {_names(versions)}; aliases: {_names(aliases)})",
                path="$.model-version",
            )
        return self._existing(model_id, aliases[version_or_alias], versions,
                              f"alias {version_or_alias!r} -> ")

    def version_dir(self, model_id: str, version: int | str | None = None) -> Path:
        """The folder of a version (resolved as in :meth:`resolve`)."""
        return self._model_dir(model_id) / str(self.resolve(model_id, version))

    def load_manifest(self, model_id: str, version: int | str | None = None) -> Manifest:
        """The manifest of a version (resolved as in :meth:`resolve`)."""
        path = self.version_dir(model_id, version) / _MANIFEST
        return decode_manifest(path.read_bytes())

    def state_token(self) -> tuple:
        """A cheap value that changes whenever a version appears or vanishes or an alias moves.

        A few ``scandir``/``stat`` calls per model; the engine polls it to decide when to reload.
        """
        token = []
        for model_id in self.model_ids():
            model_dir = self.root / model_id
            try:
                versions = tuple(sorted(e.name for e in os.scandir(model_dir)
                                        if _VERSION.fullmatch(e.name)))
                st = os.stat(model_dir / _ALIASES)
                alias_stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                alias_stamp = None
                if not model_dir.is_dir():
                    continue
            token.append((model_id, versions, alias_stamp))
        return tuple(token)

    # --- internals ----------------------------------------------------------------------------

    def _model_dir(self, model_id: str) -> Path:
        check_model_id(model_id)
        path = self.root / model_id
        if not path.is_dir():
            raise NotFoundError(
                f"unknown model {model_id!r} (models: {_names(self.model_ids())})",
                path="$.model-id",
            )
        return path

    def _existing(self, model_id: str, version: int, versions: list[int], via: str) -> int:
        if version not in versions:
            raise NotFoundError(
                f"model {model_id!r} has no version {via}{version} (versions: {_names(versions)})",
                path="$.model-version",
            )
        return version

    def _next_version(self, model_id: str) -> int:
        # Never reuse a number, even of a version folder deleted by hand: decision-log rows name it.
        used = self.versions(model_id)
        used += [e["version"] for e in self.history(model_id) if isinstance(e.get("version"), int)]
        return max(used, default=0) + 1

    def _write_aliases(self, model_id: str, aliases: dict[str, int]) -> None:
        model_dir = self.root / model_id
        tmp = model_dir / f"{_TMP_PREFIX}{_ALIASES}.{uuid.uuid4().hex}"
        _write_file(tmp, json.dumps(dict(sorted(aliases.items())), indent=2).encode())
        os.replace(tmp, model_dir / _ALIASES)
        _fsync_path(model_dir)

    def _append_history(self, model_id: str, action: str, version: int | None, alias: str | None,
                        previous: int | None, message: str, **extra: str) -> None:
        entry = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "action": action,
            "version": version,
            "alias": alias,
            "previous": previous,
            "message": message,
            "who": _user(),
            **extra,
        }
        with open(self.root / model_id / _HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextlib.contextmanager
    def _lock(self, model_id: str, name: str = ".lock") -> Iterator[None]:
        """An exclusive advisory lock across processes (released by the OS if we crash)."""
        path = self._model_dir(model_id) / name
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _as_manifest(manifest: Manifest | bytes | str | os.PathLike) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    if isinstance(manifest, (bytes, bytearray, memoryview)):
        return decode_manifest(bytes(manifest))
    path = Path(manifest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"manifest file {str(path)!r} does not exist", path="manifest") from None
    return decode_manifest(data)


def _artifact_name(manifest: Manifest) -> str:
    name = manifest.model.artifact
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or name == _MANIFEST or (
        parts and parts[0].startswith(".")
    ):
        raise SchemaError(
            f"artifact {name!r} must be a relative file name inside the version folder "
            f"(not absolute, no '..', not {_MANIFEST!r})",
            path="$.model.artifact",
        )
    return name


def _alias_stack(history: list[dict], alias: str) -> list[int]:
    """Versions the alias went through, replayed from the history: promote pushes, rollback pops."""
    stack: list[int] = []
    for e in history:
        if e.get("alias") != alias:
            continue
        if e["action"] == "promoted" and (not stack or stack[-1] != e["version"]):
            stack.append(e["version"])
        elif e["action"] == "rolled-back" and stack:
            stack.pop()
            if not stack or stack[-1] != e["version"]:
                stack.append(e["version"])
    return stack


def _remove_temp_dirs(model_dir: Path) -> None:
    for e in os.scandir(model_dir):
        if e.name.startswith(_TMP_PREFIX):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ScorelineError):
        where = f" (at {exc.path})" if exc.path else ""
        return f"{exc.message}{where}"
    return f"{type(exc).__name__}: {exc}"


def _names(items) -> str:
    items = list(items)
    return ", ".join(map(str, items)) if items else "none"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (e.g. a container without a passwd entry)
        return str(os.getuid())
