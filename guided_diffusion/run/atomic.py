"""Writes that either complete under the final name or leave nothing there.

A crash mid-write must never leave a truncated checkpoint, sample batch or
image under a real name: write beside the target, fsync, then rename. Object
stores (gs://, az://) publish an object only when its upload closes, which
gives the same guarantee through blobfile.

Files get the mode `open()` would give them (0666 less the umask), not
mkstemp's 0600, so that the other users of a shared cluster can read
checkpoints, samples and datasets. A write that fails raises `OutputError`,
one line naming the final path (a full disk says how many bytes were needed
where that is known); nothing is left under the final name or the temp name.
A writer killed mid-write does leave its temp file, `.tmp-<name>.<random>`:
`remove_stale_temps` deletes those of a directory's own outputs when a run
resumes there.
"""

import contextlib
import errno
import hashlib
import io
import os
import shutil
import signal
import tempfile
import threading

import blobfile as bf

TEMP_PREFIX = ".tmp-"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class OutputError(OSError):
    """A file could not be written; str() is one line naming the final path and why."""

    def __init__(self, error_number, message, path):
        super().__init__(error_number, message, path)
        self.message = message

    def __str__(self):
        return self.message


def is_remote(path):
    return "://" in str(path)


def current_umask():
    """The process umask, read without changing it where /proc allows (os.umask can only be read by setting it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def format_bytes(count):
    """'3.1 MB (3,067,327 bytes)' style, for messages about sizes."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count:,} bytes)"
    return f"{count:,} bytes"


def disk_full_cause(error):
    """The ENOSPC/EDQUOT OSError in `error`'s chain (torch.save wraps it in a RuntimeError), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def _free_bytes(directory):
    with contextlib.suppress(OSError):
        return shutil.disk_usage(directory).free
    return None


def check_free_space(directory, needed, what):
    """Raise the disk-full OutputError, before anything is written, when `what` needs more than is free."""
    if is_remote(directory):
        return
    free = _free_bytes(directory)
    if free is not None and needed > free:
        raise OutputError(
            errno.ENOSPC,
            f"disk full: {what} needs about {format_bytes(needed)} in {directory}, {format_bytes(free)} free; "
            "nothing was written",
            str(directory),
        )


def _write_failure(path, error, written, size_hint, temp=None):
    """The OutputError for a failed write of `path` through `temp`, or None when `error` is about something else.

    An OSError that names another file (a read inside the block, say) is left as it is.
    """
    directory = os.path.dirname(os.path.abspath(path))
    full = disk_full_cause(error)
    if full is not None:
        free = _free_bytes(directory)
        free_text = f", {format_bytes(free)} free" if free is not None else ""
        if size_hint:
            need = f"needs about {format_bytes(size_hint)}{free_text}"
        else:
            need = f"the disk filled after {format_bytes(written)}{free_text}"
        return OutputError(full.errno, f"disk full: cannot write {path} ({need}); nothing was written under that name", path)
    if isinstance(error, OSError) and error.errno is not None and error.filename in (None, temp, path):
        return OutputError(error.errno, f"cannot write {path}: {error.strerror or error}", path)
    return None


def check_writable(path, flag):
    """Raise OutputError naming `flag` unless a file can be written at `path` (checked before long work, not after)."""
    path = str(path)
    if is_remote(path):
        return
    if os.path.isdir(path):
        raise OutputError(errno.EISDIR, f"{flag} {path}: is a directory; expected a file name", path)
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory):
        if os.path.exists(directory):
            raise OutputError(errno.ENOTDIR, f"{flag} {path}: {directory} is not a directory", path)
        directory = os.path.dirname(directory)
    if not os.access(directory, os.W_OK):
        read_only = False
        with contextlib.suppress(OSError):
            read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        why = "is on a read-only filesystem" if read_only else "is not writable"
        raise OutputError(errno.EROFS if read_only else errno.EACCES, f"{flag} {path}: {directory} {why}", path)


@contextlib.contextmanager
def atomic_open(path, mode="wb", size_hint=None):
    """Open `path` for writing ("wb" or "w"); the file appears only if the block succeeds.

    `size_hint`, the bytes the file will take when known, goes into the disk-full message.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only, mode 'wb' or 'w', got {mode!r}")
    path = str(path)
    if is_remote(path):
        buffer = io.BytesIO() if mode == "wb" else io.StringIO()
        yield buffer
        data = buffer.getvalue()
        with bf.BlobFile(path, "wb") as f:
            f.write(data if mode == "wb" else data.encode("utf-8"))
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(path) + ".", dir=directory)
    except OSError as e:
        raise _write_failure(path, e, 0, size_hint, temp=e.filename) from None
    written = 0
    try:
        with contextlib.suppress(OSError):
            # Some network filesystems refuse chmod; the file then keeps mkstemp's mode.
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            finally:
                with contextlib.suppress(OSError, ValueError):
                    written = os.fstat(f.fileno()).st_size
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        failure = _write_failure(path, e, written, size_hint, temp=tmp)
        if failure is None:
            raise
        raise failure from None


def is_temp_name(name):
    """Whether a file name is a temp file of `atomic_open` (left behind only by a killed writer)."""
    return os.path.basename(str(name)).startswith(TEMP_PREFIX)


def temp_target_name(name):
    """The final name that a temp file of `atomic_open` was written for, or None for other names."""
    base = os.path.basename(str(name))
    if not base.startswith(TEMP_PREFIX):
        return None
    target, dot, _ = base[len(TEMP_PREFIX) :].rpartition(".")
    return target if dot and target else None


def remove_stale_temps(directory, owns=None, recursive=False):
    """Delete the temp files that killed writers left in `directory`; returns their paths.

    Only temps of final names that `owns(name)` accepts (all when None) are removed.
    Call it only while no other process writes there, i.e. holding the directory's
    `run_lock`: a live writer's temp file looks the same as a dead one's.
    """
    if is_remote(directory) or not os.path.isdir(directory):
        return []
    removed = []
    for root, dirs, files in os.walk(directory):
        for name in files:
            target = temp_target_name(name)
            if target is None or (owns is not None and not owns(target)):
                continue
            path = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        if not recursive:
            break
    return sorted(removed)


def atomic_write_bytes(path, data):
    with atomic_open(path, "wb", size_hint=len(data)) as f:
        f.write(data)


def atomic_write_text(path, text):
    with atomic_open(path, "w", size_hint=len(text.encode("utf-8"))) as f:
        f.write(text)


class _HashingWriter:
    """Write-only stream that hashes what passes through; torch.save writes sequentially, so the hash is the file's."""

    def __init__(self, file):
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self._file.write(data)

    def flush(self):
        self._file.flush()


def tensor_bytes(obj):
    """The bytes of the tensors in `obj` (nested dicts, lists, tuples): about what torch.save writes."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj, path):
    """torch.save `obj` to `path` atomically; returns (sha256 hex, size in bytes) of the file written."""
    import torch

    with atomic_open(path, "wb", size_hint=tensor_bytes(obj) or None) as f:
        writer = _HashingWriter(f)
        with interrupt_after(f"while writing {path}, which was not kept"):
            torch.save(obj, writer)
    return writer.sha256.hexdigest(), writer.size


@contextlib.contextmanager
def interrupt_after(detail):
    """Hold a Ctrl-C (SIGINT) back until the block ends, then raise it as KeyboardInterrupt(detail).

    torch.save turns an interrupt inside its writer into a RuntimeError ("unexpected pos ..."), which
    would read as a bug; held back, it ends the run with the one interrupt line. Main thread only:
    elsewhere signal handlers cannot be set, nor are they run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt(detail)
