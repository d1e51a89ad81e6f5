"""A local, append-only spool of messages that could not be published yet.

Layout: ``<spool_dir>/slot-N/`` holds one producer's segments (``NNNNNNNN.spool``), each line a
JSON object ``{"d": base64 body, "a": attributes}``. A producer owns its slot through an
exclusive ``flock`` on ``slot-N/.lock``; a restarted producer takes the first free slot and so
finds what an earlier, crashed one left there. A segment is deleted only after every message in
it was published; a torn last line (crash mid-write) is skipped and counted.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

Message = tuple[bytes, dict[str, str]]


def encode_line(data: bytes, attributes: dict[str, str]) -> bytes:
    """One spool line for a message: ``{"d": base64 body, "a": attributes}``.

    Assembled around the base64 text (which JSON needs no escape for): the same bytes as
    ``json.dumps`` of the object, for about half its cost on the spool writer's thread.
    """
    return b'{"d": "%s", "a": %s}\n' % (base64.b64encode(data), json.dumps(attributes).encode())


def decode_line(line: bytes) -> Message | None:
    """A message from a spool line, or None for a torn or corrupt line."""
    try:
        entry = json.loads(line)
        return base64.b64decode(entry["d"], validate=True), dict(entry["a"])
    except (ValueError, KeyError, TypeError):
        return None


class SpoolClosedError(RuntimeError):
    """The spool gave up its slot; a late writer must claim a slot of its own."""


class Spool:
    """Segments of one slot; thread-safe append, rotation, and replay by whole segments."""

    def __init__(self, root: Path, max_bytes: int, segment_bytes: int) -> None:
        self.root = root
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self.lock = threading.Lock()  # also held across fork(): see before_fork
        self._closed = False
        root.mkdir(parents=True, exist_ok=True)
        self.dir, self._lock_file = self._claim_slot(root)
        self._active: IO[bytes] | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        self._size = sum(p.stat().st_size for p in self._segments())
        self._next_seq = max((int(p.stem) for p in self._segments()), default=0) + 1

    @staticmethod
    def _claim_slot(root: Path) -> tuple[Path, IO[bytes]]:
        for n in range(1024):
            slot = root / f"slot-{n}"
            slot.mkdir(exist_ok=True)
            handle = (slot / ".lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return slot, handle
        raise RuntimeError(f"no free spool slot under {root}")

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.spool"))

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in this slot."""
        return self._size

    def is_empty(self) -> bool:
        """True when nothing waits to be replayed."""
        with self.lock:
            return self._size == 0

    def append(self, lines: list[bytes], *, sync: bool = True) -> tuple[int, int]:
        """Append encoded lines (and fsync with ``sync``); returns (written, dropped by the cap).

        Past the cap the newest lines are dropped, so the oldest spooled usage is kept. Without
        ``sync`` the lines are in the page cache when this returns: they survive the death of
        the process, not of the machine. Raises SpoolClosedError after ``close``.
        """
        written = dropped = 0
        with self.lock:
            if self._closed:
                raise SpoolClosedError(str(self.dir))
            segment: list[bytes] = []  # written in one call per segment: one system call
            for line in lines:
                if self._size + len(line) > self._max_bytes:
                    dropped += 1
                    continue
                if self._active is None or self._active_size >= self._segment_bytes:
                    self._write(segment)
                    self._rotate()
                segment.append(line)
                self._active_size += len(line)
                self._size += len(line)
                written += 1
            self._write(segment)
            if self._active is not None:
                self._active.flush()
                if sync:
                    os.fsync(self._active.fileno())
        return written, dropped

    def _write(self, lines: list[bytes]) -> None:
        if lines and self._active is not None:
            self._active.write(b"".join(lines))
            lines.clear()

    def _rotate(self) -> None:
        if self._active is not None:
            self._active.close()
        self._active_path = self.dir / f"{self._next_seq:08d}.spool"
        self._next_seq += 1
        self._active = self._active_path.open("ab")
        self._active_size = 0

    def seal(self) -> None:
        """Close the active segment so that it can be replayed."""
        with self.lock:
            if self._active is not None:
                self._active.close()
                self._active = None
                self._active_path = None

    def sealed_segments(self) -> Iterator[Path]:
        """Segments no longer written to, oldest first."""
        with self.lock:
            active = self._active_path
            segments = [p for p in self._segments() if p != active]
        yield from segments

    @staticmethod
    def read_chunks(segment: Path, size: int) -> Iterator[tuple[list[Message], int]]:
        """A segment's messages, ``size`` lines at a time, each with its count of unreadable lines.

        In chunks so that a replay which fails at its first publish (Pub/Sub still down) has
        decoded one chunk, not the whole segment.
        """
        with segment.open("rb") as handle:
            while lines := list(itertools.islice(handle, size)):
                messages: list[Message] = []
                corrupt = 0
                for line in lines:
                    message = decode_line(line)
                    if message is None:
                        corrupt += 1
                    else:
                        messages.append(message)
                yield messages, corrupt

    @contextlib.contextmanager
    def orphaned_segments(self) -> Iterator[list[Path]]:
        """Segments of one other slot that no live process holds, locked while the block runs.

        A slot is orphaned when its process ended and none took its place (fewer workers than
        before): without adoption its spool would wait for a process that never comes.
        """
        for slot in sorted(self.root.glob("slot-*")):
            if slot == self.dir or not any(slot.glob("*.spool")):
                continue
            handle = (slot / ".lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield sorted(slot.glob("*.spool"))
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        yield []

    def remove(self, segment: Path) -> None:
        """Delete a segment whose messages were all published."""
        with self.lock, contextlib.suppress(FileNotFoundError):
            size = segment.stat().st_size
            segment.unlink()
            if segment.parent == self.dir:
                self._size -= size

    def close(self) -> None:
        """Fsync, close files and give up the slot."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if self._active is not None:
                with contextlib.suppress(OSError):
                    self._active.flush()
                    os.fsync(self._active.fileno())
                self._active.close()
                self._active = None
                self._active_path = None
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def before_fork(self) -> None:
        """Hold the lock across fork(), so that the child finds no append cut in half."""
        self.lock.acquire()

    def after_fork_in_parent(self) -> None:
        """Release what ``before_fork`` held."""
        self.lock.release()

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptors; the parent keeps slot and files.

        The parent held ``lock`` across fork(), so no write buffer holds half a line. The
        descriptor of the slot lock is only closed here, never unlocked: an unlock would release
        the parent's slot too.
        """
        self.lock = threading.Lock()
        self._closed = True
        if self._active is not None:
            self._active.close()
            self._active = None
        self._lock_file.close()
