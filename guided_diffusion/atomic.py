"""Writes that either complete under the final name or leave nothing there.

A crash mid-write must never leave a truncated checkpoint, sample batch or
image under a real name: write beside the target, fsync, then rename. Object
stores (gs://, az://) publish an object only when its upload closes, which
gives the same guarantee through blobfile.
"""

import contextlib
import io
import os
import tempfile

import blobfile as bf

TEMP_PREFIX = ".tmp-"


def is_remote(path):
    return "://" in str(path)


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open `path` for writing ("wb" or "w"); the file appears only if the block succeeds."""
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
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_temp_name(name):
    """Whether a file name is a temp file of `atomic_open` (left behind only by a killed writer)."""
    return os.path.basename(str(name)).startswith(TEMP_PREFIX)


def atomic_write_bytes(path, data):
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj, path):
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
