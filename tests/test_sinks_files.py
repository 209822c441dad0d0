"""JSON-lines event files: one write per line, rotation, retention, caps."""

from __future__ import annotations

import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from collector import outputs
from collector.outputs.base import QueueSettings
from collector.outputs.files import FileSettings, RotatingFileOutput, StreamOutput
from collector.outputs.formats import ECS, TRIMMED_TAG
from collector.outputs.message import Message
from schemas.config import Config
from tests.ops import event_files, wait_for

QUEUE = QueueSettings(size=100_000, retry_initial=0.01, retry_max=0.1, drain=10)


def message(number: int, sample: int = 0, pad: int = 0) -> Message:
    """A message shaped like an ECS event, numbered, with a sample to trim."""
    document: dict[str, Any] = {
        "@timestamp": "2026-01-01T00:00:00Z",
        "n": number,
        "pad": "x" * pad,
        "tags": ["cups"],
        "flowtrap": {"sample": [{"flow": i, "pad": "y" * 200} for i in range(sample)]},
    }
    return Message(document, datetime.now(UTC), 47, "test_detector", ECS)


def output(path: Path, **files: Any) -> RotatingFileOutput:
    """A file output on ``path`` with test-sized settings."""
    settings = FileSettings(**{"fsync_seconds": 0.05, "keep": 1000, **files})
    return RotatingFileOutput(str(path), path, QUEUE, settings)


class Tail:
    """Reads event files the way a SIEM agent does: only up to the last newline."""

    def __init__(self, link: Path) -> None:
        """Start with nothing read."""
        self.link = link
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, bytes] = {}
        self.lines: list[dict[str, Any]] = []

    def poll(self) -> int:
        """Read what is new in every file; return how many lines were complete."""
        found = 0
        for path in event_files(self.link):
            with path.open("rb") as handle:
                handle.seek(self.offsets.get(path, 0))
                chunk = handle.read()
            self.offsets[path] = self.offsets.get(path, 0) + len(chunk)
            data = self.partial.get(path, b"") + chunk
            *complete, rest = data.split(b"\n")
            self.partial[path] = rest
            for line in complete:
                self.lines.append(orjson.loads(line))
                found += 1
        return found


def test_concurrent_reader_sees_every_line_whole_while_files_rotate(
    tmp_path: Path,
) -> None:
    """A tailing reader during rotation gets every line once, in order, unbroken."""
    link = tmp_path / "events.jsonl"
    writer = output(link, rotate_bytes=4096)
    writer.start()
    tail = Tail(link)
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            tail.poll()

    reader = threading.Thread(target=read)
    reader.start()
    total = 3000
    for number in range(total):
        writer.submit(message(number, pad=number % 97))
    writer.stop()
    writer.join()
    done.set()
    reader.join()
    tail.poll()

    assert [line["n"] for line in tail.lines] == list(range(total))
    assert all(rest == b"" for rest in tail.partial.values())
    assert writer.rotations > 10
    assert writer.sent == total
    assert writer.dropped == 0
    for path in event_files(link):
        assert path.stat().st_size <= 4096


def test_rotation_creates_new_files_and_never_renames_the_one_being_written(
    tmp_path: Path,
) -> None:
    """A file keeps its inode and name from creation to rotation."""
    link = tmp_path / "events.jsonl"
    writer = output(link, rotate_bytes=2048)
    writer.start()
    writer.submit(message(0))
    wait_for(lambda: writer.sent == 1)
    first = writer.current
    assert first is not None
    inode = first.stat().st_ino
    for number in range(1, 100):
        writer.submit(message(number))
    writer.stop()
    writer.join()

    assert first.exists()
    assert first.stat().st_ino == inode
    assert writer.current != first
    assert len(event_files(link)) == writer.rotations + 1


def test_each_start_begins_a_new_file_and_the_link_follows_it(tmp_path: Path) -> None:
    """Two runs write two files; the configured path links to the newer."""
    link = tmp_path / "events.jsonl"
    for number in range(2):
        writer = output(link)
        writer.start()
        writer.submit(message(number))
        writer.stop()
        writer.join()

    files = event_files(link)
    assert len(files) == 2
    assert link.is_symlink()
    assert link.resolve() == files[-1]
    assert orjson.loads(link.read_bytes())["n"] == 1


def test_retention_keeps_only_the_newest_files(tmp_path: Path) -> None:
    """Past ``keep`` files, the oldest are deleted; the newest lines remain."""
    link = tmp_path / "events.jsonl"
    writer = output(link, rotate_bytes=1024, keep=3)
    writer.start()
    for number in range(200):
        writer.submit(message(number, pad=100))
    writer.stop()
    writer.join()

    files = event_files(link)
    assert len(files) == 3
    numbers = [
        orjson.loads(line)["n"] for path in files for line in path.read_bytes().split()
    ]
    assert numbers == list(range(numbers[0], 200))


def test_event_files_are_created_0640_whatever_the_umask(tmp_path: Path) -> None:
    """Files are readable by the owner's group (the SIEM agent), no one else."""
    old = os.umask(0o077)
    try:
        writer = output(tmp_path / "events.jsonl")
        writer.start()
        writer.stop()
        writer.join()
    finally:
        os.umask(old)
    (path,) = event_files(tmp_path / "events.jsonl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_time_rotation_starts_a_new_file_only_when_the_current_one_has_data(
    tmp_path: Path,
) -> None:
    """An aged file with lines gives way to a new one; an empty one stays."""
    link = tmp_path / "events.jsonl"
    writer = output(link, rotate_seconds=0.2)
    writer.start()
    writer.submit(message(0))
    wait_for(lambda: writer.rotations >= 1, what="a time rotation")
    # Several more rotation periods pass with nothing written.
    time.sleep(1.0)
    quiet = writer.rotations
    writer.stop()
    writer.join()

    assert quiet == 1
    assert len(event_files(link)) == 2


def test_reopen_begins_a_new_file(tmp_path: Path) -> None:
    """SIGHUP's reopen closes the current file and starts another."""
    link = tmp_path / "events.jsonl"
    writer = output(link)
    writer.start()
    writer.submit(message(0))
    wait_for(lambda: writer.sent == 1)
    writer.reopen()
    wait_for(lambda: len(event_files(link)) == 2, what="a new file")
    writer.submit(message(1))
    writer.stop()
    writer.join()

    first, second = event_files(link)
    assert orjson.loads(first.read_bytes())["n"] == 0
    assert orjson.loads(second.read_bytes())["n"] == 1


def test_reopens_without_events_never_push_out_a_file_that_has_some(
    tmp_path: Path,
) -> None:
    """An empty file is removed when the next begins, so retention counts only
    files with events: more SIGHUPs than ``keep`` lose nothing."""
    link = tmp_path / "events.jsonl"
    writer = output(link, keep=3)
    writer.start()
    writer.submit(message(0))
    wait_for(lambda: writer.sent == 1)
    kept = event_files(link)[0]
    for reopens in range(1, 6):
        writer.reopen()
        wait_for(lambda r=reopens: writer.rotations == r, what="the reopen")
    writer.stop()
    writer.join()

    files = event_files(link)
    assert kept in files
    assert len(files) == 2
    assert orjson.loads(kept.read_bytes())["n"] == 0
    assert files[-1].read_bytes() == b""


def test_long_lines_lose_sample_records_and_are_tagged_trimmed(tmp_path: Path) -> None:
    """A line over the cap keeps its fields, loses sample records, gets a tag."""
    link = tmp_path / "events.jsonl"
    writer = output(link, max_line_bytes=2048)
    writer.start()
    original = message(7, sample=20)
    writer.submit(original)
    writer.stop()
    writer.join()

    line = link.read_bytes()
    assert len(line) <= 2048
    event = orjson.loads(line)
    assert event["n"] == 7
    assert 0 < len(event["flowtrap"]["sample"]) < 20
    assert TRIMMED_TAG in event["tags"]
    assert writer.trimmed == 1
    # The message other outputs share is left whole.
    assert len(original.document["flowtrap"]["sample"]) == 20


def test_a_line_too_long_even_without_sample_is_written_whole(tmp_path: Path) -> None:
    """An event is never dropped for its size: it is written and counted."""
    link = tmp_path / "events.jsonl"
    writer = output(link, max_line_bytes=1024)
    writer.start()
    writer.submit(message(1, pad=3000))
    writer.stop()
    writer.join()

    assert orjson.loads(link.read_bytes())["n"] == 1
    assert writer.oversize == 1


def test_a_regular_file_at_the_configured_path_is_left_alone(tmp_path: Path) -> None:
    """Events from an older flowtrap at the path are not replaced by the link."""
    link = tmp_path / "events.jsonl"
    link.write_bytes(b'{"old": true}\n')
    writer = output(link)
    writer.start()
    writer.submit(message(0))
    writer.stop()
    writer.join()

    assert not link.is_symlink()
    assert link.read_bytes() == b'{"old": true}\n'
    assert len(event_files(link)) == 1


def test_a_device_named_as_the_event_file_is_written_as_a_stream() -> None:
    """/dev/stdout or a named pipe gets lines without rotation or links."""
    built = outputs.build(Config(events=["/dev/null", "-"]))
    kinds = [type(output) for output in built.outputs]
    assert kinds == [StreamOutput, StreamOutput]
    built.start()
    built.close()
