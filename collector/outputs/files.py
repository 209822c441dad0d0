"""JSON-lines files that SIEM agents can tail safely, and standard output.

Agents (Filebeat, Elastic Agent, Vector, Fluent Bit, Splunk UF) follow files by
inode and read up to the last newline. So every line is written with one
``write()`` on a file opened for appending; a rotation opens a new file under a
new name and never renames or truncates one that an agent may still be reading;
and the configured path is a symbolic link to the file being written, for people
and ``tail -F``. Agents should read the glob ``STEM-*SUFFIX`` instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from collector.outputs.base import QueuedOutput, QueueSettings, Undeliverable
from collector.outputs.message import Message, encode

log = logging.getLogger(__name__)

FILE_MODE = 0o640


@dataclass(frozen=True, slots=True)
class FileSettings:
    """Rotation, retention, fsync and line cap, from ``[output.file]``."""

    rotate_bytes: int = 100 * 1024 * 1024
    rotate_seconds: float = 86_400.0
    keep: int = 14
    fsync_seconds: float = 1.0
    max_line_bytes: int = 8192


class _LineOutput(QueuedOutput):
    """An output of newline-terminated JSON documents, capped in length."""

    def __init__(self, name: str, settings: QueueSettings, cap: int) -> None:
        """Remember the line cap."""
        super().__init__(name, settings)
        self.cap = cap
        self.oversize = 0

    def encode(self, message: Message) -> bytes:
        """Encode within the cap, leaving room for the newline."""
        encoded = encode(message, self.cap - 1)
        if encoded.removed:
            self.trimmed += 1
        if encoded.oversize:
            self.oversize += 1
        return encoded.data + b"\n"


class StreamOutput(_LineOutput):
    """Standard output (or a pipe or device named as a file): no rotation."""

    def __init__(
        self, name: str, settings: QueueSettings, cap: int, path: str = ""
    ) -> None:
        """Write to ``path``, or to standard output when it is empty."""
        super().__init__(name, settings, cap)
        self.path = path
        self._handle: BinaryIO | None = None
        self._closed_by_reader = False

    def open(self) -> None:
        """Take standard output, or open the named pipe or device."""
        if self.path:
            self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open until close()
        else:
            self._handle = sys.stdout.buffer
        self.connected = True

    def send(self, payload: bytes) -> None:
        """Write one line and flush it; a reader that went away drops the rest."""
        if self._closed_by_reader or self._handle is None:
            raise Undeliverable("the event reader went away")
        try:
            self._handle.write(payload)
            self._handle.flush()
        except BrokenPipeError:
            self._closed_by_reader = True
            if not self.path:
                # Later flushes of stdout (at exit too) must not fail again.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            raise Undeliverable("the event reader went away") from None

    def close(self) -> None:
        """Flush; close what this output opened itself."""
        if self._handle is None:
            return
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._handle.flush()
        if self.path:
            self._handle.close()
        self._handle = None


class RotatingFileOutput(_LineOutput):
    """JSON lines in files that rotate by size and age, keeping the newest few.

    Each start, each rotation and each reopen (SIGHUP) begins a new file named
    ``STEM-YYYYmmddTHHMMSS.mmmZSUFFIX`` (UTC); names sort in time order.
    """

    def __init__(
        self, name: str, path: Path, settings: QueueSettings, files: FileSettings
    ) -> None:
        """Remember where to write; no I/O until start()."""
        super().__init__(name, settings, files.max_line_bytes)
        self.link = path
        self.files = files
        self.current: Path | None = None
        self.rotations = 0
        self._fd = -1
        self._size = 0
        self._opened = 0.0
        self._synced = 0.0
        self._dirty = False
        self._reopen = False
        self._pattern = re.compile(
            re.escape(path.stem)
            + r"-\d{8}T\d{6}\.\d{3}Z"
            + re.escape(path.suffix)
            + "$"
        )

    def open(self) -> None:
        """Create the directory and the first file (a failure stops start-up)."""
        if self.link.is_dir():
            raise IsADirectoryError(
                errno.EISDIR,
                "is a directory; name a file in it, such as DIR/events.jsonl",
                str(self.link),
            )
        self.link.parent.mkdir(parents=True, exist_ok=True)
        self._new_file(time.time())
        self.connected = True

    def reopen(self) -> None:
        """Begin a new file at the next chance (SIGHUP)."""
        self._reopen = True

    def send(self, payload: bytes) -> None:
        """Append one line with one write, rotating first when it is due."""
        now = time.time()
        if self._fd < 0 or self._reopen or self._due(now, len(payload)):
            self._rotate(now)
        view = memoryview(payload)
        while view:
            # A regular file takes the whole line in one write; the loop only
            # matters on a short write (for example a full disk).
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(payload)
        self._dirty = True

    def idle(self, now: float) -> None:
        """Force data to disk periodically; rotate by age or on request."""
        if self._reopen or (self._fd >= 0 and self._due(now, 0)):
            self._rotate(now)
        if self._dirty and now - self._synced >= self.files.fsync_seconds:
            self._sync(now)

    def disconnect(self) -> None:
        """Close the file after a failed write; the retry opens a new one."""
        self._close_file()

    def close(self) -> None:
        """Force the data to disk and close the file."""
        self._close_file()

    def _due(self, now: float, incoming: int) -> bool:
        """Return True when the current file should give way to a new one."""
        if self._size == 0:
            return False
        if self._size + incoming > self.files.rotate_bytes:
            return True
        age = self.files.rotate_seconds
        return age > 0 and now - self._opened >= age

    def _rotate(self, now: float) -> None:
        """Finish the current file and begin a new one.

        A file that got no event is removed rather than kept: otherwise a run
        of SIGHUPs would fill ``keep`` with empty files and retention would
        delete the last files that hold events.
        """
        self._reopen = False
        if self._fd >= 0:
            empty = self._size == 0
            self._close_file()
            self.rotations += 1
            if empty and self.current is not None:
                with contextlib.suppress(OSError):
                    self.current.unlink()
        self._new_file(now)

    def _new_file(self, now: float) -> None:
        """Create a new, empty file with a fresh name, then apply retention."""
        stamp = int(now * 1000)
        while True:
            path = self._name(stamp)
            try:
                fd = os.open(
                    path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    FILE_MODE,
                )
                break
            except FileExistsError:
                stamp += 1
        # The umask may have narrowed the mode; agents reading as a group need it.
        os.fchmod(fd, FILE_MODE)
        self._fd, self.current = fd, path
        self._size, self._opened, self._synced = 0, now, now
        self._point_link(path)
        self._sync_directory()
        self._retain()
        log.info("event file opened", extra={"path": str(path)})

    def _name(self, stamp_ms: int) -> Path:
        """Return the file name for a UTC time in milliseconds."""
        when = datetime.fromtimestamp(stamp_ms / 1000, UTC)
        text = when.strftime("%Y%m%dT%H%M%S") + f".{stamp_ms % 1000:03d}Z"
        return self.link.with_name(f"{self.link.stem}-{text}{self.link.suffix}")

    def _point_link(self, path: Path) -> None:
        """Point the configured path at the current file, atomically."""
        try:
            existing = self.link.lstat()
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISLNK(existing.st_mode):
            log.warning(
                "not replacing a regular file with the link to the current file",
                extra={"path": str(self.link), "current": str(path)},
            )
            return
        temporary = self.link.with_name(f".{self.link.name}.{os.getpid()}.link")
        try:
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(path.name)
            temporary.replace(self.link)
        except OSError as error:
            log.warning(
                "cannot link to the current file",
                extra={"path": str(self.link), "error": error.strerror},
            )

    def _retain(self) -> None:
        """Delete the oldest event files beyond ``keep`` (never the current one)."""
        names = sorted(
            entry.name
            for entry in os.scandir(self.link.parent)
            if self._pattern.match(entry.name) and entry.is_file(follow_symlinks=False)
        )
        excess = len(names) - self.files.keep
        for name in names:
            if excess <= 0:
                break
            path = self.link.parent / name
            if path == self.current:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning(
                    "cannot remove an old event file",
                    extra={"path": str(path), "error": error.strerror},
                )
            excess -= 1

    def _sync_directory(self) -> None:
        """fsync the directory, so that the new file's name survives a crash."""
        fd = os.open(self.link.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync(self, now: float) -> None:
        """fsync the current file."""
        if self._fd >= 0:
            os.fsync(self._fd)
        self._synced = now
        self._dirty = False

    def _close_file(self) -> None:
        """fsync and close the current file, if any."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as error:
            if error.errno != errno.EINVAL:
                log.warning("cannot sync an event file", extra={"error": str(error)})
        finally:
            os.close(fd)
        self._dirty = False


def is_stream(path: Path) -> bool:
    """Return True when ``path`` is a pipe or device, written without rotation."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)
