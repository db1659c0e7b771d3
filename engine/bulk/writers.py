"""Bulk outputs that appear whole or not at all, even under Ctrl-C and kill -9: AtomicWriter writes a
hidden temporary file beside the destination, `commit_together` renames a job's files as one step
with Ctrl-C held off, `interruptible()` makes every Ctrl-C count, and stale temporary files of
killed jobs are removed by the next job writing into the same folder."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

__all__ = ["AtomicWriter", "commit_together", "interruptible", "clean_stale"]

# `.<name>.tmp-<pid>-<random>`: the pid says whether a live process may still be writing it.
_TMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


class _Interrupts:
    """SIGINT as a flag plus KeyboardInterrupt: the flag survives a KeyboardInterrupt that some
    library swallows (one raised inside a finalizer is printed and dropped), so the next batch
    written raises it again; inside `held()` the signal is only recorded, never raised, so a rename
    or a clean-up is never cut in half."""

    def __init__(self) -> None:
        self.pending = False
        self.installed = False
        self.finished = False  # the job's files are published: a Ctrl-C changes nothing any more
        self._held = 0

    def handler(self, signum, frame) -> None:
        first, self.pending = not self.pending, True
        # a second press while the first unwinds the job is recorded only: the clean-up finishes
        if first and not self._held and not self.finished:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C came and was not acted on (outside `held()`)."""
        if self.installed and self.pending and not self._held and not self.finished:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self):
        if not self.installed or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1


_interrupts = _Interrupts()


@contextlib.contextmanager
def interruptible(*, until_exit: bool = False):
    """For a command's whole run (main thread): every Ctrl-C interrupts the job (KeyboardInterrupt,
    and the output writers refuse to go on), except while files are being renamed or removed,
    where it takes effect right after; once `commit_together` has published the job's files, a
    Ctrl-C no longer undoes anything and is only recorded. `until_exit` (a command run as its own
    process): after a Ctrl-C, or once the files are published, the job's outcome is settled and
    further Ctrl-Cs are ignored while the process exits, so a late one cannot turn a finished or
    interrupted job's exit status into a death by the signal (Python resets handlers to the default
    while it finalizes, but not an ignored signal). In-process callers get their handler back."""
    previous = signal.signal(signal.SIGINT, _interrupts.handler)
    _interrupts.installed, _interrupts.pending, _interrupts.finished = True, False, False
    try:
        yield
    finally:
        _interrupts.installed = False
        settled = until_exit and (_interrupts.pending or _interrupts.finished)
        signal.signal(signal.SIGINT, signal.SIG_IGN if settled else previous)


def _umask() -> int:
    # Read, not set: os.umask() would change it for every thread for a moment.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def clean_stale(folder: str | os.PathLike[str], before: float) -> list[Path]:
    """Remove the temporary files that jobs killed outright (kill -9, a power cut) left in `folder`:
    those named by this module, last written before `before` (a `time.time()`), whose writing
    process is gone. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TMP.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= before or _alive(int(match.group(1))):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class AtomicWriter:
    """Writes RecordBatches to ``<dir>/.<name>.tmp-<pid>-XXXX`` and renames it to ``path`` on
    ``commit()``.

    The temporary file sits in the destination's folder so the rename is atomic (same file
    system), and its hidden ``.tmp`` name never looks like a finished output. ``abort()`` (or
    leaving a ``with`` block by an exception, KeyboardInterrupt included) removes it. The file is
    created on the first batch; ``commit()`` with no batch written creates an empty file with
    the schema. Creating the writer removes stale temporary files of dead processes from the
    destination's folder (`clean_stale`).
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, fmt: str) -> None:
        self.path = Path(path)
        self.schema = schema
        self.format = fmt
        self.rows = 0
        self._tmp: str | None = None
        self._writer: Any = None  # a pq.ParquetWriter or an ipc writer, opened on the first write
        clean_stale(self.path.parent, time.time())

    def write(self, batch: pa.RecordBatch) -> None:
        _interrupts.check()
        if self._writer is None:
            self._open()
        if batch.schema != self.schema:
            batch = batch.cast(self.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _interrupts.held():  # the name is recorded before a Ctrl-C can leave the file behind
            self._tmp = str(self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        os.close(fd)
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        else:
            self._writer = ipc.new_file(self._tmp, self.schema)

    def close(self) -> None:
        """Finish the temporary file (created empty if nothing was written); it keeps its name."""
        if self._writer is None:
            self._open()
        self._writer.close()
        self._writer = None

    def publish(self) -> Path:
        """Move the closed temporary file to its final name; returns that name."""
        os.replace(cast(str, self._tmp), self.path)  # named by close(), which comes first
        self._tmp = None
        return self.path

    def commit(self) -> Path:
        """Close the file and move it to its final name; returns that name."""
        return commit_together(self)[0]

    def abort(self) -> None:
        """Close and delete the temporary file (idempotent)."""
        with _interrupts.held():
            if self._writer is not None:
                try:
                    self._writer.close()
                except Exception:  # noqa: BLE001 - the file is being thrown away anyway
                    pass
                self._writer = None
            if self._tmp is not None:
                try:
                    os.unlink(self._tmp)
                except FileNotFoundError:
                    pass
                self._tmp = None

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._tmp is not None:
            self.abort()


def commit_together(*writers: AtomicWriter) -> list[Path]:
    """Close every writer (a Ctrl-C here interrupts the job), then rename them all, in order, with
    Ctrl-C held off until the last rename is done: the files appear together or not at all."""
    for writer in writers:
        writer.close()
    with _interrupts.held():
        if _interrupts.pending and _interrupts.installed and not _interrupts.finished:
            raise KeyboardInterrupt  # it came while closing: nothing is published
        published = [writer.publish() for writer in writers]
        # A job's files are out: a Ctrl-C from now on changes nothing, so the command ends with
        # its result (the summary is printed, exit 0), not with 130 over complete files.
        _interrupts.finished = _interrupts.installed
        return published
