"""One writer per run directory: a lock file in it that names the holder's host and pid.

Two runs writing one training --log_dir (or one sampling --out_dir) would
interleave checkpoints and logs, and the removal of stale temp files that a
resumed run does would delete the live run's files in flight. So rank 0 of a
run holds `<dir>/.lock` while it writes there: a POSIX record lock
(`fcntl.lockf`) on a file that records the holder (host, pid, start time,
command line).

The kernel drops a record lock when its holder dies, however it dies (kill -9
included), so a lock left by a dead run is taken over without anyone deleting
anything; the record it left is reported. Unlike flock, a record lock is not
shared with forked children (DataLoader workers, which outlive a killed parent
by seconds), and NFS supports it natively, so the lock also holds between
nodes on a shared NFS filesystem (not on every cluster filesystem: check
yours). Locks are per process: one process never conflicts with itself.
Object-store directories (gs://, az://) have no locks; runs there are not guarded.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys

from .atomic import OutputError, is_remote

LOCK_NAME = ".lock"


class DirectoryLockedError(OutputError):
    """The directory is held by another live run; str() is one line naming the holder."""


def _describe(record):
    if not record:
        return "a run that left no record"
    text = f"pid {record.get('pid')} on host {record.get('host')}"
    if record.get("started"):
        text += f" (started {record['started']})"
    return text


def _read_record(fd):
    with contextlib.suppress(OSError, ValueError):
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data.decode("utf-8"))
        if isinstance(record, dict):
            return record
    return None


class DirectoryLock:
    """The held lock of one directory; `notes` are lines worth logging (a dead holder taken over, files cleaned)."""

    def __init__(self, fd, path, notes):
        self._fd = fd
        self.path = path
        self.notes = notes

    def release(self):
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            # Unlink while still holding: a run that opens the path afterwards makes a new file.
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def acquire(directory, flag="directory", name=LOCK_NAME):
    """Lock `directory` (created if needed) for this process; DirectoryLockedError if a live run holds it.

    `flag` names the directory in messages (e.g. "--log_dir"); `name` is the lock file
    (sampling shards, which write one out_dir side by side, each hold their own). Returns
    a DirectoryLock, or None for object-store directories, which cannot be locked.
    """
    directory = str(directory)
    if is_remote(directory):
        return None
    path = os.path.join(directory, name)
    while True:
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OutputError(e.errno, f"{flag} {directory}: cannot write there ({e.strerror or e})", directory) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _read_record(fd)
            os.close(fd)
            raise DirectoryLockedError(
                errno.EBUSY,
                f"{flag} {directory} is in use by another run: {_describe(holder)}; "
                f"wait for it to end, stop it, or use another {flag}",
                directory,
            ) from None
        # A holder that released between our open and our lock unlinked the file we opened.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    previous = _read_record(fd)
    record = dict(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=" ".join(sys.argv),
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
    notes = []
    if previous is not None:
        notes.append(f"took over the lock of {flag} {directory} from {_describe(previous)}, which ended without releasing it")
    return DirectoryLock(fd, path, notes)


@contextlib.contextmanager
def hold(directory, flag="directory", enabled=True, clean=None, name=LOCK_NAME):
    """Hold `directory`'s lock for the block when `enabled` (rank 0 of a job); yields the DirectoryLock or None.

    `clean(directory)` runs once the lock is held, the only time it is safe to remove
    what killed writers left there (stale temp files); it returns the paths it removed,
    which the lock's `notes` then list.
    """
    lock = acquire(directory, flag, name) if enabled else None
    try:
        if lock is not None and clean is not None:
            removed = clean(directory)
            if removed:
                shown = ", ".join(os.path.relpath(p, directory) for p in removed[:5])
                more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
                lock.notes.append(f"removed {len(removed)} temp file(s) that an interrupted run left in {directory}: {shown}{more}")
        yield lock
    finally:
        if lock is not None:
            lock.release()


# What a run writes before its first logged step: the lock and the logger's text log (progress.csv still empty).
SET_UP_FILES = (LOCK_NAME, "log.txt", "progress.csv")


def _holds_only_set_up(directory):
    entries = list(os.scandir(directory))
    return all(e.is_file(follow_symlinks=False) and e.name in SET_UP_FILES for e in entries) and not any(
        e.name == "progress.csv" and e.stat().st_size > 0 for e in entries)


@contextlib.contextmanager
def removed_when_refused(directory, enabled=True):
    """Remove `directory` when the block raises, if the block created it and it holds only a run's set-up files.

    A run refused at set-up (bad data, a checkpoint that does not fit) then leaves no log dir
    for the next run or the user to mistake for a started one; the refusal itself is on stderr.
    A directory that existed before, or that got a logged step or a checkpoint, is kept.
    """
    created_here = enabled and not is_remote(directory) and not os.path.exists(directory)
    try:
        yield
    except BaseException:
        if created_here and os.path.isdir(directory) and _holds_only_set_up(directory):
            shutil.rmtree(directory, ignore_errors=True)
        raise
