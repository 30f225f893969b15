"""Local-filesystem stand-in for the few blobfile calls the project makes, for GPU machines without blobfile.

gpu_check.py puts this folder on the path only when `import blobfile` fails: every path
the GPU check touches is local, and blobfile's own dependencies (lxml) are compiled per
Python version, so they cannot travel with the working tree. Cloud paths fail loudly.
"""

import os
import shutil

SHIM = True


def _local(path):
    path = os.fspath(path)
    if "://" in path:
        raise ValueError(f"{path}: the blobfile shim reads local paths only")
    return path


def BlobFile(path, mode="r", **_):  # noqa: N802  (blobfile's name)
    return open(_local(path), mode)


def join(*parts):
    return os.path.join(*parts)


def basename(path):
    return os.path.basename(path)


def dirname(path):
    return os.path.dirname(path)


def exists(path):
    return os.path.exists(_local(path))


def isdir(path):
    return os.path.isdir(_local(path))


def listdir(path):
    return sorted(os.listdir(_local(path)))


def makedirs(path):
    os.makedirs(_local(path), exist_ok=True)


def remove(path):
    os.remove(_local(path))


def copy(src, dst, overwrite=False, **_):
    if not overwrite and os.path.exists(_local(dst)):
        raise FileExistsError(dst)
    shutil.copyfile(_local(src), dst)


class _Stat:
    def __init__(self, result):
        self.size, self.mtime, self.ctime = result.st_size, result.st_mtime, result.st_ctime


def stat(path):
    return _Stat(os.stat(_local(path)))
