"""Settlements Redis could not take, on local disk, so that a killed process loses none.

While Redis is unreachable ``RedisGuard`` keeps the settlements of the requests it served
in memory and replays them once Redis answers. Each one is also appended here, one JSON
line, to ``<dir>/<host>-<pid>.jsonl``, which the process holds under an exclusive ``flock``
for as long as it lives; the file is emptied when the spool has been replayed. A process
killed during an outage leaves its file behind, unlocked: the next gateway process that
starts with the same directory takes it over (its lock proves the owner is gone), adds the
entries to its own spool, and replays them; the settle script ignores a request id it has
already settled, so an entry replayed twice counts once.

Written with ``flush`` but not ``fsync``: a killed process's writes survive in the page
cache; a machine that loses power may lose the last ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from gateway.budgets import Window
from policies.budget import BudgetSpec

log = structlog.get_logger("tiergate.spool")


@dataclasses.dataclass(frozen=True, slots=True)
class Spooled:
    """A settlement Redis could not take yet: replayed through the settle script later."""

    request_id: str
    windows: tuple[Window, ...]
    cost_nanos: int
    event: dict[str, Any]


def encode(item: Spooled) -> bytes:
    return orjson.dumps(
        {
            "request_id": item.request_id,
            "cost_nanos": item.cost_nanos,
            "event": item.event,
            "windows": [
                {
                    "spec": dataclasses.asdict(w.spec),
                    "start": w.start.isoformat(),
                    "reset_at": w.reset_at.isoformat(),
                }
                for w in item.windows
            ],
        }
    )


def decode(line: bytes) -> Spooled:
    raw = orjson.loads(line)
    windows = []
    for w in raw["windows"]:
        spec = dict(w["spec"])
        spec["soft_thresholds"] = tuple(spec.get("soft_thresholds") or ())
        windows.append(
            Window(
                BudgetSpec(**spec),
                datetime.fromisoformat(w["start"]),
                datetime.fromisoformat(w["reset_at"]),
            )
        )
    return Spooled(raw["request_id"], tuple(windows), int(raw["cost_nanos"]), raw["event"])


class SpoolFile:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self._fh: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("ab")
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fh = fh
        return self._fh

    def append(self, items: list[Spooled]) -> None:
        fh = self._open()
        fh.write(b"".join(encode(i) + b"\n" for i in items))
        fh.flush()

    def clear(self) -> None:
        if self._fh is not None:
            self._fh.truncate(0)
            self._fh.flush()

    def close(self) -> None:
        if self._fh is None:
            return
        empty = os.fstat(self._fh.fileno()).st_size == 0
        self._fh.close()
        self._fh = None
        if empty:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def adopt_orphans(self) -> list[Spooled]:
        """Entries of spool files whose process is gone, moved into this process's file."""
        if not self.dir.is_dir():
            return []
        adopted: list[Spooled] = []
        for path in sorted(self.dir.glob("*.jsonl")):
            if path == self.path:
                continue
            try:
                fh = path.open("rb")
            except OSError:
                continue
            with fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive and replays its own
                items = []
                for line in fh.read().splitlines():
                    try:
                        items.append(decode(line))
                    except (ValueError, KeyError, TypeError):
                        log.error("unreadable spool line skipped", file=str(path), line=line[:200])
                if items:
                    self.append(items)  # ours now, before the orphan file goes
                path.unlink()
            adopted += items
        if adopted:
            log.warning("took over spooled settlements of a stopped process", count=len(adopted))
        return adopted
