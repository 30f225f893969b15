"""Image inputs of an evaluation, read in uint8 NHWC batches without holding the whole set in memory.

Three forms are accepted:
- an ADM sample file: `.npz` whose `arr_0` is uint8 (N, H, W, 3). `arr_0` is
  streamed from the archive in chunks (np.load's mmap_mode does not apply to
  members of an .npz, it would read all 9.8 GB of a 50K x 256^2 file at once);
- a folder of sample batches (the sampling stage's `batches/`): every
  `batch_*.npz` in it, read in index order (or, when there is none, every
  `*.npz` with `arr_0`, in name order); a folder holding a single other .npz is
  read as that ADM sample file;
- a folder of images (`guided_diffusion.image_ops.IMAGE_EXTENSIONS`), searched
  recursively, all of one size; a prepared dataset directory is such a folder.
Files and folders whose names start with "." (e.g. temp files of an
in-flight atomic write) are ignored.
"""

import hashlib
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from guided_diffusion.image_ops import IMAGE_EXTENSIONS, decode_image, is_image_file
from guided_diffusion.run.sample_store import BATCH_DIR, read_batch_file, scan_batch_files

from .errors import EvaluationError, MissingInputError

SAMPLES_KEY = "arr_0"
DECODE_THREADS = min(8, os.cpu_count() or 1)


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _check_image_array_shape(shape, dtype, where):
    if len(shape) != 4 or shape[3] != 3:
        raise EvaluationError(f"{where} must be uint8 images (N, H, W, 3), got shape {tuple(shape)}")
    if np.dtype(dtype) != np.uint8:
        raise EvaluationError(f"{where} must be uint8 images (N, H, W, 3), got dtype {np.dtype(dtype)}")


def _fingerprint(entries):
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(repr(entry).encode("utf-8"))
    return digest.hexdigest()


def _stat_entry(path, name):
    info = os.stat(path)
    return (name, info.st_size, info.st_mtime_ns)


class _NpzMember:
    """Sequential reader of one .npy member of an .npz, header parsed, rows read on demand."""

    def __init__(self, path, key):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise EvaluationError(f"{path!r} is not a readable .npz archive: {err}") from None
        member = f"{key}.npy"
        if member not in self._zip.namelist():
            keys = sorted(n[: -len(".npy")] for n in self._zip.namelist() if n.endswith(".npy"))
            self._zip.close()
            raise EvaluationError(f"{path!r} has no '{key}' array (keys: {keys}); expected ADM samples in '{key}'")
        self._file = self._zip.open(member)
        version = np.lib.format.read_magic(self._file)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(self._file)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(self._file)
        else:
            self.close()
            raise EvaluationError(f"{path!r}: '{key}' uses .npy format version {version}, expected 1.0 or 2.0")
        if fortran_order:
            self.close()
            raise EvaluationError(f"{path!r}: '{key}' is stored in Fortran order; save it C-contiguous")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read_rows(self, count):
        rows = np.empty((count,) + self.shape[1:], dtype=self.dtype)
        view = memoryview(rows).cast("B")
        filled = 0
        while filled < len(view):
            got = self._file.readinto(view[filled:])
            if not got:
                raise EvaluationError(f"{self.path!r} is truncated: expected {count} more rows")
            filled += got
        return rows

    def close(self):
        if hasattr(self, "_file"):
            self._file.close()
        self._zip.close()


class NpzImages:
    """ADM sample file: `arr_0` uint8 (N, H, W, 3) in an .npz."""

    def __init__(self, path):
        self.path = path
        member = _NpzMember(path, SAMPLES_KEY)
        member.close()
        _check_image_array_shape(member.shape, member.dtype, f"{path!r} '{SAMPLES_KEY}'")
        self.num_images = member.shape[0]
        self.image_shape = member.shape[1:]

    def fingerprint(self):
        return _fingerprint([_stat_entry(self.path, os.path.basename(self.path))])

    def batches(self, batch_size):
        member = _NpzMember(self.path, SAMPLES_KEY)
        try:
            for start in range(0, self.num_images, batch_size):
                yield member.read_rows(min(batch_size, self.num_images - start))
        finally:
            member.close()


class SampleBatchDirectory:
    """A folder of .npz files with `arr_0`: the sampling stage's batch files, read in index order
    (`guided_diffusion.run.sample_store` names and checks them), or any other .npz files, in name order."""

    def __init__(self, path, npz_names):
        self.path = path
        batches = scan_batch_files(path)
        if batches:
            for (_, previous_last, previous), (first, _, current) in zip(batches, batches[1:]):
                if first <= previous_last:
                    raise EvaluationError(f"sample index {first} appears in both {previous!r} and {current!r}")
            self._ranges = {file: (first, last) for first, last, file in batches}
            self.files = [file for _, _, file in batches]
        else:
            self._ranges = {}
            self.files = [os.path.join(path, n) for n in sorted(npz_names, key=_natural_key)]
        shapes = []
        for file in self.files:
            member = _NpzMember(file, SAMPLES_KEY)
            member.close()
            _check_image_array_shape(member.shape, member.dtype, f"{file!r} '{SAMPLES_KEY}'")
            shapes.append(member.shape)
        image_shapes = {shape[1:] for shape in shapes}
        if len(image_shapes) > 1:
            raise EvaluationError(f"batches in {path!r} have different image shapes: {sorted(image_shapes)}")
        self.num_images = sum(shape[0] for shape in shapes)
        self.image_shape = shapes[0][1:]

    def fingerprint(self):
        return _fingerprint([_stat_entry(f, os.path.basename(f)) for f in self.files])

    def _images(self, file):
        if file in self._ranges:
            try:
                return read_batch_file(file, *self._ranges[file])[0]
            except ValueError as err:
                raise EvaluationError(str(err)) from None
        with np.load(file) as contents:
            return contents[SAMPLES_KEY]

    def batches(self, batch_size):
        pending, pending_count = [], 0
        for file in self.files:
            images = self._images(file)
            pending.append(images)
            pending_count += images.shape[0]
            while pending_count >= batch_size:
                joined = np.concatenate(pending)
                yield joined[:batch_size]
                pending, pending_count = [joined[batch_size:]], joined.shape[0] - batch_size
        if pending_count:
            yield np.concatenate(pending)


class ImageFolder:
    """Image files under a folder (recursive), all of one size, decoded to RGB uint8."""

    def __init__(self, path):
        self.path = path
        relative = []
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if is_image_file(name):
                    relative.append(os.path.relpath(os.path.join(root, name), path))
        if not relative:
            raise MissingInputError(
                f"{path!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}) and no .npz sample batches"
            )
        self.relative_paths = sorted(relative, key=_natural_key)
        self.num_images = len(self.relative_paths)
        self.image_shape = None
        self.image_shape = self._decode(self.relative_paths[0]).shape

    def fingerprint(self):
        return _fingerprint([_stat_entry(os.path.join(self.path, r), r) for r in self.relative_paths])

    def _decode(self, relative_path):
        full = os.path.join(self.path, relative_path)
        try:
            with open(full, "rb") as f:
                array = np.asarray(decode_image(f.read(), full), dtype=np.uint8)
        except (OSError, ValueError) as err:
            raise EvaluationError(str(err) if isinstance(err, ValueError) else f"cannot read image {full}: {err}") from None
        if self.image_shape is not None and array.shape != self.image_shape:
            raise EvaluationError(
                f"images in {self.path!r} have mixed sizes: {relative_path!r} is {array.shape[1]}x{array.shape[0]}, "
                f"{self.relative_paths[0]!r} is {self.image_shape[1]}x{self.image_shape[0]}; resize them to one size"
            )
        return array

    def batches(self, batch_size):
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            for start in range(0, self.num_images, batch_size):
                names = self.relative_paths[start : start + batch_size]
                yield np.stack(list(pool.map(self._decode, names)))


class FirstImages:
    """The first `limit` images of another source, in its order (for quick reference statistics)."""

    def __init__(self, source, limit):
        if limit < 2:
            raise EvaluationError(f"--num_images must be at least 2, got {limit}")
        self.source = source
        self.num_images = min(limit, source.num_images)
        self.image_shape = source.image_shape

    def fingerprint(self):
        return f"{self.source.fingerprint()}|first{self.num_images}"

    def batches(self, batch_size):
        remaining = self.num_images
        for batch in self.source.batches(min(batch_size, remaining)):
            if remaining <= 0:
                break
            yield batch[:remaining]
            remaining -= min(len(batch), remaining)


def _npz_files(directory):
    return [
        n
        for n in os.listdir(directory)
        if n.endswith(".npz") and not n.startswith(".") and os.path.isfile(os.path.join(directory, n))
    ]


def open_image_source(path):
    """NpzImages, SampleBatchDirectory or ImageFolder for `path` (see the module docstring).

    A sampling output directory works as it is: its merged `samples_*.npz`
    when that exists, else its `batches/` folder.
    """
    source = _open_source(os.fspath(path))
    if source.num_images == 0:
        # Later every statistic of zero feature vectors fails somewhere deep (a KeyError, a NaN).
        raise EvaluationError(f"{path!r} holds no images (its image arrays have 0 rows); expected samples or images")
    return source


def _open_source(path):
    if os.path.isdir(path):
        npz_names = _npz_files(path)
        if len(npz_names) == 1 and not npz_names[0].startswith("batch_"):
            return NpzImages(os.path.join(path, npz_names[0]))
        if npz_names:
            return SampleBatchDirectory(path, npz_names)
        batch_dir = os.path.join(path, BATCH_DIR)
        if os.path.isdir(batch_dir) and _npz_files(batch_dir):
            return SampleBatchDirectory(batch_dir, _npz_files(batch_dir))
        return ImageFolder(path)
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise EvaluationError(f"{path!r} is neither an .npz of samples nor a folder of images or sample batches")
        return NpzImages(path)
    raise MissingInputError(f"{path!r} does not exist")
