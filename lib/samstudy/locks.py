"""One writer per results folder.

:func:`folder_lock` is a context manager that makes its caller the only process writing into a
folder for the duration of the block::

    with folder_lock(layout.root, "samstudy run demo"):
        ...  # write into results/demo/

- The lock is an OS-level ``flock`` on ``<folder>/.samstudy.lock`` (the ``filelock`` package),
  taken **without waiting**: when another process holds it, :class:`FolderLocked` is raised at
  once, naming the holder (pid, host, user, command line, since when) and the folder.
- The holder writes an *owner record* ``<folder>/.samstudy.lock.json`` (atomically) right after
  acquiring, and deletes it on a normal release. The lock file itself stays (deleting it would let
  two processes lock two different inodes under the same name).
- A run killed with ``kill -9`` (or by the OOM killer, or a power cut) cannot clean up, but the
  kernel drops its ``flock`` when the process dies, so the next run acquires the lock normally. It
  then finds the dead run's owner record still there and logs a warning naming that holder (and
  whether its pid is gone on this host) before overwriting the record.
- The lock belongs to the open file, not to the thread: a second ``folder_lock`` on the same
  folder in the same process fails like one from another process (no silent re-entry). A child
  started with ``fork`` (without ``exec``) shares the parent's lock; children started with
  ``exec``/``spawn`` (notebook kernels, ``multiprocessing`` spawn workers) do not inherit it and can
  take their own locks on *other* folders.

Shared filesystems: ``flock`` is only as good as the filesystem's lock support. On local disks it
is exact. On NFS, Linux emulates ``flock`` with NFS byte-range locks, which work across clients
with NFSv4 (or NFSv3 with a working ``lockd``); mounts with ``nolock`` or ``local_lock=flock/all``
keep locks local to one client, so two machines can then both "hold" the folder. The liveness
check of a previous owner (:func:`pid_alive`) only means something for records written on this
host; a record from another host is reported as such and never judged dead or alive.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import logging
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from .files import read_json, write_json_atomic

__all__ = ["LOCK_NAME", "OWNER_NAME", "FolderLocked", "folder_lock", "read_owner", "pid_alive", "describe_owner"]

LOCK_NAME = ".samstudy.lock"          # the flock'ed file
OWNER_NAME = ".samstudy.lock.json"    # who holds it (written by the holder)

log = logging.getLogger(__name__)


class FolderLocked(RuntimeError):
    """Another process is writing into ``folder``. ``owner`` is its owner record (``None`` when it
    has not written one yet); the message names the folder and the holder."""

    def __init__(self, folder: Path, owner: dict[str, Any] | None):
        self.folder, self.owner = folder, owner
        who = describe_owner(owner)
        if owner and _ended_here(owner):  # a new holder between its flock and its own record
            who = f"another process (the owner record still names {who}, which has ended)"
        super().__init__(f"{folder} is in use by {who}; wait for it to finish or stop it "
                         f"(a killed run releases the folder by itself)")


def describe_owner(owner: dict[str, Any] | None) -> str:
    """One line naming an owner record: ``'<what>' (pid P on HOST, user U, since T): <command>``."""
    if not owner:
        return "another process (it has not written its owner record yet)"
    return (f"{owner.get('what')!r} (pid {owner.get('pid')} on {owner.get('host')}, user {owner.get('user')}, "
            f"since {owner.get('started')}): {owner.get('command')}")


def read_owner(folder: Path) -> dict[str, Any] | None:
    """The owner record of ``folder``'s lock, or ``None`` when there is none (or it is unreadable)."""
    rec = read_json(Path(folder) / OWNER_NAME)
    return rec if isinstance(rec, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this host and is not a zombie.

    A zombie (dead, not yet reaped by its parent) holds no file locks, so it counts as dead.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to another user
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or it just exited: trust kill(0)
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]  # the state field follows "(command)"


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder`` (created when missing) for the block; yield the folder's path.

    what: a short description of the holder for other processes' error messages
        (e.g. ``"samstudy run demo"``).
    Raises :class:`FolderLocked` immediately when another holder has it. On entry a leftover owner
    record (the previous holder died without releasing) is logged as a warning and replaced; on exit
    (also on an exception) the owner record is removed and the lock released.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # preserve_lock_file: the path is never unlinked (see the module docstring), which also stops
    # filelock from silently falling back to an existence-based "soft" lock that a kill -9 would leave behind.
    lock = FileLock(folder / LOCK_NAME, thread_local=False, preserve_lock_file=True)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise FolderLocked(folder, read_owner(folder)) from None
    try:
        _warn_if_stale(folder, read_owner(folder))
        write_json_atomic(folder / OWNER_NAME, _owner_record(what))
        yield folder
    finally:
        try:
            (folder / OWNER_NAME).unlink(missing_ok=True)
        finally:
            lock.release()


def _owner_record(what: str) -> dict[str, Any]:
    return {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "user": _user(),
            "command": _command_line(),
            "started": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")}


def _warn_if_stale(folder: Path, previous: dict[str, Any] | None) -> None:
    """A record left behind means its writer never released: say who, and whether it is gone."""
    if previous is None:
        return
    if previous.get("host") != socket.gethostname() or not isinstance(previous.get("pid"), int):
        state = f"recorded on host {previous.get('host')}, liveness unknown here"
    elif _ended_here(previous):
        state = "no longer running"
    else:  # pid reused, or the holder is alive but failed to clean up
        state = "still running, but no longer holding the lock"
    log.warning("%s: taking over the lock of %s, which ended without releasing it (%s)",
                folder, describe_owner(previous), state)


def _ended_here(owner: dict[str, Any]) -> bool:
    """The record was written on this host by a process that no longer exists."""
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry / no login name (containers)
        return str(os.getuid())


def _command_line() -> str:
    """The process's full command line (``/proc/self/cmdline`` names the interpreter and ``-c``/``-m``
    arguments that ``sys.argv`` drops), else ``sys.argv``."""
    try:
        argv = [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        argv = [sys.executable, *sys.argv]
    return shlex.join(argv)
