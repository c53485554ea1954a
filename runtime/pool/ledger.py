"""Which process groups the local pool started: one small JSON file per group under <home>/procs/.

The file appears right after the group is started and goes only once the group is gone, so a
record outlives the process that wrote it: if gunicorn replaces the worker that owned the pool
(a crash, a heartbeat kill), the next owner finds the groups it left and adopts or kills them,
and `warmstart local down` finds them too. One file per group means no read-modify-write of a
shared file, so two owners can never drop each other's records.

A record is trusted only while it still describes the same process: the pid leads its own
process group, its start time (/proc/PID/stat) is the one recorded, and its command line is the
recorded argv (or a title vLLM gave it); or the leader is gone but members of its group are left.
A reused pid fails that check, and its record is dropped without touching the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TITLE_PREFIX = "VLLM::"  # vLLM renames some of its processes with setproctitle


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat(5); fields[0] is field 3


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


@dataclass
class Record:
    pid: int  # also the process group id: every group is started with start_new_session
    owner: int  # the pid of the pool's process
    kind: str  # "replica" | "standby"
    argv: list[str]
    start: int  # start_ticks(pid) when it was recorded
    id: str = ""
    port: int = 0
    state: str = "launching"
    via_standby: bool = False
    log: str = ""
    started: float = field(default_factory=time.time)

    def ours(self) -> bool:
        """True while `pid` is still the process this record was written for, or its leader has
        exited but the group lives on (its EngineCore or worker): Linux does not hand out a pid
        while a process group still carries it as its id, so such a group is still ours."""
        ticks = start_ticks(self.pid)
        if ticks is None:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return False
            return True
        if ticks != self.start:
            return False
        with contextlib.suppress(OSError):
            if os.getpgid(self.pid) != self.pid:
                return False
        cmd = cmdline(self.pid)
        if not cmd:
            return False
        return cmd == self.argv or cmd[0].startswith(TITLE_PREFIX)


class Ledger:
    def __init__(self, home: Path) -> None:
        self.dir = home / "procs"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, pid: int) -> Path:
        return self.dir / f"{pid}.json"

    def record(self, pid: int, *, owner: int, kind: str, argv: list[str], **extra: Any) -> Record | None:
        """Record a group just started; None if it already exited (nothing to remember)."""
        start = start_ticks(pid)
        if start is None:
            return None
        rec = Record(pid=pid, owner=owner, kind=kind, argv=[str(a) for a in argv], start=start, **extra)
        self.write(rec)
        return rec

    def write(self, rec: Record) -> None:
        tmp = self.dir / f".{rec.pid}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(self._path(rec.pid))

    def update(self, pid: int, **changes: Any) -> None:
        rec = self.get(pid)
        if rec is None:
            return
        for k, v in changes.items():
            setattr(rec, k, v)
        self.write(rec)

    def forget(self, pid: int) -> None:
        self._path(pid).unlink(missing_ok=True)

    def get(self, pid: int) -> Record | None:
        try:
            data = json.loads(self._path(pid).read_text())
            return Record(**data)
        except (OSError, ValueError, TypeError):
            return None

    def records(self) -> list[Record]:
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out.append(Record(**json.loads(p.read_text())))
            except (OSError, ValueError, TypeError):
                p.unlink(missing_ok=True)  # unreadable: it can name no process we could verify
        return out

    def live(self) -> list[Record]:
        """Records whose process is still the one recorded; the others are dropped."""
        alive = []
        for rec in self.records():
            if rec.ours():
                alive.append(rec)
            else:
                self.forget(rec.pid)
        return alive
