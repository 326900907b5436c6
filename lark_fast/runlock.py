"""One scoring run per output at a time: an exclusive lock on the run directory (``<output>.parts``).

``RunLock`` takes ``fcntl.flock`` on ``<run_dir>/lock`` and writes the holder's pid and host into it. The
kernel releases the lock when its holder dies, so a lock left by a killed run is simply taken over; a
live holder makes a second run fail at once with a ``RunLocked`` error that names it. On a file system
without locks the file's pid and host decide: a dead process on this host is taken over. Under torchrun
the ranks are one run: rank 0 takes the lock and tells the others whether it got it. The lock is
re-entrant within a process (the command line holds it around ``score``, which takes it too).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Optional

from . import dist
from .dist import Shard
from .table import process_alive

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)  # flock on a file system that has none
_HELD: dict = {}  # resolved lock path -> [file descriptor, depth] of the locks this process holds


class RunLocked(ValueError):
    """Another live process holds the run directory."""


class RunLock:
    def __init__(self, run_dir, shard: Optional[Shard] = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "lock"
        self.shard = shard or Shard()
        self.key = str(self.path.resolve())

    def __enter__(self) -> "RunLock":
        error = None
        if self.shard.rank == 0:
            try:
                self._acquire()
            except Exception as e:  # every rank raises it, none waits for the others
                error = e
        error = dist.broadcast(self.shard, error)
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc) -> None:
        if self.shard.rank == 0:
            self._release()

    def _acquire(self) -> None:
        if self.key in _HELD:
            _HELD[self.key][1] += 1
            return
        while True:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            try:  # the path may have been removed (a finished run) or replaced since we opened it
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        _HELD[self.key] = [fd, 1]

    def _lock(self, fd: int) -> None:
        """flock; on a file system without locks, the holder written in the file decides: a live process on
        this host, or any process on another host, keeps it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder, hint = _holder(fd), ""
        except OSError as e:
            if e.errno not in NO_LOCKS:
                raise
            holder, hint = _holder(fd), f" (if that run is gone, delete {self.path})"
            here = holder.get("host") == socket.gethostname()
            if not holder or (here and (holder["pid"] == os.getpid() or not process_alive(holder["pid"]))):
                return  # no holder, or a dead one: taken over
        who = f"pid {holder['pid']} on {holder['host']}" if holder else "holder unknown"
        raise RunLocked(f"{self.run_dir} is in use by another run ({who}); wait for it to finish, or give another "
                        f"--output{hint}")

    def _release(self) -> None:
        held = _HELD[self.key]
        held[1] -= 1
        if held[1]:
            return
        del _HELD[self.key]
        try:  # a run directory left with nothing but its lock (nothing was scored) goes with it
            if [p.name for p in self.run_dir.iterdir()] == ["lock"]:
                self.path.unlink()
                self.run_dir.rmdir()
        except OSError:
            pass
        os.close(held[0])


def _holder(fd: int) -> dict:
    """{"pid", "host"} of the lock file's holder, or {} when it names none."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return {"pid": int(info["pid"]), "host": str(info["host"])}
    except (ValueError, KeyError, TypeError, OSError):
        return {}
