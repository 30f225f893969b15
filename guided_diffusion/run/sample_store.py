"""The on-disk layout of a sampling run, shared by the sampler that writes it and the evaluations that read it.

    <out_dir>/run.json                           the flags that define the images (written on first use)
    <out_dir>/batches/batch_{first}_{last}.npz   one file per finished batch: arr_0 (uint8 NHWC),
                                                 indices, labels for class-conditional models, and
                                                 identity (run.json's image_flags, as JSON)
    <out_dir>/png/{index:06d}.png                with --png
    <out_dir>/samples_{N}x{H}x{W}x3.npz          ADM's format: arr_0 (uint8 NHWC), arr_1 (labels, if any)

Every file is written atomically. Batches are cut on the grid [k B, (k + 1) B)
and around what is already on disk, so any interrupted run can be completed
by sampling only the missing indices; the temp files of writes it was killed
in (a merge temp of 50K 256x256 images is 9.8 GB) are removed then.

A batch file names what made it, so that one copied in from another out_dir is
refused instead of merged (`check_batch_identities`), as is an out_dir with batch
files but no run.json. Out_dirs from before batches carried an identity have a
run.json without `stamped_batches`: their unstamped batches are accepted, as
run.json was then the only record and still matches; stamped ones must match it.
"""

import contextlib
import datetime
import itertools
import json
import os
import re
import zipfile

import numpy as np
from PIL import Image

from .atomic import atomic_open, atomic_write_text, remove_stale_temps

RUN_FILE = "run.json"
BATCH_DIR = "batches"
PNG_DIR = "png"
BATCH_FILE_PATTERN = re.compile(r"^batch_(\d+)_(\d+)\.npz$")
SAMPLES_FILE_PATTERN = re.compile(r"^samples_\d+x\d+x\d+x3\.npz$")
PNG_FILE_PATTERN = re.compile(r"^\d+\.png$")

# Zip member timestamps are fixed so that equal samples give byte-equal npz files.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


class OutDirError(OSError):
    """--out_dir cannot be created or written."""


class RunMismatchError(ValueError):
    """--out_dir already holds samples made with other image-defining flags."""


def plan_batches(num_samples, batch_size, done_ranges):
    """Inclusive (first, last) index ranges still to sample, at most `batch_size` long.

    Batches are cut on the grid [k B, (k + 1) B) and then around what
    `done_ranges` (inclusive ranges already on disk) hold.
    """
    done = np.zeros(num_samples, dtype=bool)
    for first, last in done_ranges:
        if first < num_samples:
            done[first : min(last, num_samples - 1) + 1] = True
    batches = []
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        missing = np.flatnonzero(~done[start:stop]) + start
        if len(missing) == 0:
            continue
        breaks = np.flatnonzero(np.diff(missing) != 1) + 1
        for run in np.split(missing, breaks):
            batches.append((int(run[0]), int(run[-1])))
    return batches


def shard_batches(batches, batch_size, shard, num_shards):
    """The batches of `shard` out of `num_shards`: those in grid cells k = first // batch_size with k % num_shards == shard."""
    return [(first, last) for first, last in batches if (first // batch_size) % num_shards == shard]


def batch_file_name(first, last):
    return f"batch_{first:07d}_{last:07d}.npz"


def scan_batch_files(batch_dir):
    """Sorted [(first, last, path)] of the finished batch files in `batch_dir`."""
    found = []
    if not os.path.isdir(batch_dir):
        return found
    for name in os.listdir(batch_dir):
        match = BATCH_FILE_PATTERN.match(name)
        if match:
            first, last = int(match.group(1)), int(match.group(2))
            if first <= last:
                found.append((first, last, os.path.join(batch_dir, name)))
    found.sort()
    return found


def identity_text(identity):
    return json.dumps(identity, sort_keys=True)


def write_batch_file(batch_dir, first, images, labels=None, identity=None):
    """Write one batch atomically; `identity` (the run's image-defining flags) is stored with it when given."""
    last = first + len(images) - 1
    arrays = dict(arr_0=images, indices=np.arange(first, last + 1, dtype=np.int64))
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if identity is not None:
        arrays["identity"] = np.array(identity_text(identity))
    path = os.path.join(batch_dir, batch_file_name(first, last))
    with atomic_open(path, "wb", size_hint=images.nbytes) as f:
        np.savez(f, **arrays)
    return path


def write_pngs(png_dir, images, indices, skip_existing=False):
    for image, index in zip(images, indices):
        path = os.path.join(png_dir, f"{int(index):06d}.png")
        if skip_existing and os.path.exists(path):
            continue
        with atomic_open(path, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")


def read_batch_file(path, first, last):
    """(images, labels or None) of a batch file, checked against the index range its name gives."""
    with np.load(path) as data:
        images = data["arr_0"]
        indices = data["indices"]
        labels = data["labels"] if "labels" in data.files else None
    if not np.array_equal(indices, np.arange(first, last + 1)) or len(images) != len(indices):
        raise ValueError(f"{path}: holds indices that do not match its name {first}..{last}")
    return images, labels


def iter_samples_in_order(batch_dir, num_samples):
    """Yield (first, images, labels) covering indices 0..num_samples-1 exactly once, in order, one batch file at a time."""
    files = scan_batch_files(batch_dir)
    position = 0
    cursor = 0
    while position < num_samples:
        while cursor < len(files) and files[cursor][1] < position:
            cursor += 1
        if cursor == len(files) or files[cursor][0] > position:
            raise ValueError(f"{batch_dir}: no batch file holds sample index {position}")
        first, last, path = files[cursor]
        images, labels = read_batch_file(path, first, last)
        stop = min(last, num_samples - 1) + 1
        rows = slice(position - first, stop - first)
        yield position, images[rows], (None if labels is None else labels[rows])
        position = stop


def _npy_member(zf, name, shape, dtype):
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    member = zf.open(info, "w", force_zip64=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(member, header)
    return member


def merge_batches(batch_dir, num_samples, out_path):
    """Stream the batch files into ADM's npz at `out_path`: arr_0 uint8 NHWC, arr_1 labels if the batches have them.

    Only one batch is in memory at a time; the file appears atomically. Returns
    the shape of arr_0.
    """
    samples = iter_samples_in_order(batch_dir, num_samples)
    head = next(samples)
    shape = (num_samples,) + head[1].shape[1:]
    has_labels = head[2] is not None
    labels = np.zeros(num_samples, dtype=np.int64) if has_labels else None
    size = int(np.prod(shape)) + (labels.nbytes if has_labels else 0)
    with atomic_open(out_path, "wb", size_hint=size) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with _npy_member(zf, "arr_0.npy", shape, np.uint8) as member:
            for first, images, batch_labels in itertools.chain([head], samples):
                if images.shape[1:] != shape[1:] or images.dtype != np.uint8:
                    raise ValueError(f"{batch_dir}: batch at index {first} has images {images.dtype}{images.shape[1:]}, "
                                     f"others uint8{shape[1:]}")
                if (batch_labels is not None) != has_labels:
                    raise ValueError(f"{batch_dir}: some batch files have labels and others not")
                member.write(np.ascontiguousarray(images).data)
                if has_labels:
                    labels[first : first + len(images)] = batch_labels
        if has_labels:
            with _npy_member(zf, "arr_1.npy", labels.shape, labels.dtype) as member:
                member.write(labels.data)
    return shape


def read_batch_identity(path):
    """The image-defining flags a batch file was stamped with, or None for one written before stamping."""
    try:
        with np.load(path) as data:
            if "identity" not in data.files:
                return None
            return json.loads(str(data["identity"]))
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable batch file ({e})") from None


def _differences(one, other):
    keys = sorted(k for k in set(one) | set(other) if one.get(k) != other.get(k))
    return ", ".join(f"{k} {one.get(k)!r} vs {other.get(k)!r}" for k in keys)


def check_batch_identities(out_dir, identity):
    """Refuse batch files in `out_dir` that another run made; returns how many unstamped (older) ones were accepted.

    Call after `claim_out_dir`, which has checked `identity` against run.json.
    """
    identity = json.loads(identity_text(identity))  # as a batch file gives it back (tuples become lists)
    with open(os.path.join(out_dir, RUN_FILE)) as f:
        stamped = bool(json.load(f).get("stamped_batches"))
    unstamped = 0
    for _, _, path in scan_batch_files(os.path.join(out_dir, BATCH_DIR)):
        name = os.path.join(BATCH_DIR, os.path.basename(path))
        recorded = read_batch_identity(path)
        if recorded is None and stamped:
            raise RunMismatchError(
                f"--out_dir {out_dir}: {name} carries no identity, but every batch of this run's {RUN_FILE} does: "
                f"it was copied in from elsewhere; move it away (its indices are sampled again) or use a new --out_dir"
            )
        if recorded is None:
            unstamped += 1
        elif recorded != identity:
            raise RunMismatchError(
                f"--out_dir {out_dir}: {name} was made by another run than {RUN_FILE}'s ({_differences(recorded, identity)}, "
                "batch vs run): copied in from another out_dir?; move it away (its indices are sampled again) or "
                "merge it in its own --out_dir"
            )
    return unstamped


def samples_file_name(shape):
    return "samples_" + "x".join(str(n) for n in shape) + ".npz"


def claim_out_dir(out_dir, identity):
    """Record `identity` in out_dir/run.json, or check it equals the one there.

    Batch files without a run.json cannot be told apart from another run's, so they are refused.
    """
    path = os.path.join(out_dir, RUN_FILE)
    if not os.path.exists(path):
        orphans = scan_batch_files(os.path.join(out_dir, BATCH_DIR))
        if orphans:
            raise RunMismatchError(
                f"--out_dir {out_dir} holds {len(orphans)} batch file(s) in {BATCH_DIR}/ but no {RUN_FILE} saying "
                f"what made them, so they cannot be merged with this run's; move {BATCH_DIR}/ away or use a new --out_dir"
            )
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)["image_flags"]
        differing = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        if differing:
            details = ", ".join(f"{k} (run: {recorded.get(k)!r}, now: {identity.get(k)!r})" for k in differing)
            raise RunMismatchError(
                f"--out_dir {out_dir} holds samples made with other flags: {details}; "
                "use a new --out_dir or the same flags"
            )
        return
    record = dict(image_flags=identity, stamped_batches=True, created=datetime.datetime.now(datetime.timezone.utc).isoformat())
    try:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise OutDirError(f"--out_dir {out_dir}: cannot write {RUN_FILE} ({e.strerror or e})") from None


def make_out_dir(out_dir):
    try:
        os.makedirs(os.path.join(out_dir, BATCH_DIR), exist_ok=True)
    except OSError as e:
        raise OutDirError(f"--out_dir {out_dir}: cannot create it ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK):
        raise OutDirError(f"--out_dir {out_dir}: not writable")


def shard_lock_name(shard, num_shards):
    """The run-lock file of a sampling task: the whole out_dir's, or one per shard (shards write side by side)."""
    return ".lock" if num_shards == 1 else f".lock-shard{shard}-of-{num_shards}"


def remove_stale_temps_of_run(out_dir, batch_size=None, shard=0, num_shards=1):
    """Delete the temp files of this layout's outputs that a killed run left; returns their paths.

    Hold the out_dir's run lock: a live writer's temp file looks the same. A shard
    holds only its own lock, so it removes only the temps of its own batch files
    (PNGs and merges may be in flight from the other shards).
    """
    if num_shards > 1:
        def own_batch(name):
            match = BATCH_FILE_PATTERN.match(name)
            return match is not None and (int(match.group(1)) // batch_size) % num_shards == shard

        return remove_stale_temps(os.path.join(out_dir, BATCH_DIR), owns=own_batch)
    removed = remove_stale_temps(out_dir, owns=lambda name: name.endswith(".json") or SAMPLES_FILE_PATTERN.match(name))
    removed += remove_stale_temps(os.path.join(out_dir, BATCH_DIR), owns=BATCH_FILE_PATTERN.match)
    removed += remove_stale_temps(os.path.join(out_dir, PNG_DIR), owns=PNG_FILE_PATTERN.match)
    return removed


def merged_sample_counts(out_dir):
    """{name: N} of the merged samples_NxHxWx3.npz files in `out_dir`."""
    if not os.path.isdir(out_dir):
        return {}
    return {name: int(name[len("samples_"):].split("x")[0]) for name in os.listdir(out_dir) if SAMPLES_FILE_PATTERN.match(name)}


def check_no_larger_merge(out_dir, num_samples):
    """Refuse to sample fewer images into an out_dir that already holds a larger merged npz.

    ADM writes each run's npz into a fresh log dir, so there the larger file is never at risk.
    Here one out_dir holds one merged result: a second, smaller npz beside it would make the
    folder ambiguous to evaluations (which take its one samples_*.npz), and deleting the larger
    one loses finished work. Sample i depends only on (seed, i), so the smaller set is the
    larger file's first N images: refusing and saying so is what an ADM user needs.
    """
    for name, count in sorted(merged_sample_counts(out_dir).items()):
        if count > num_samples:
            raise RunMismatchError(
                f"--out_dir {out_dir} already holds {name} ({count} samples), more than --num_samples {num_samples}; "
                f"its first {num_samples} images (arr_0[:{num_samples}]) are those samples, so use them, or give "
                f"--num_samples {count} or another --out_dir (nothing was written)"
            )


def remove_other_merges(out_dir, keep_path):
    """Drop merged npz files of a smaller earlier --num_samples: one run directory holds one merged result.

    A smaller one is the first images of `keep_path`, so nothing is lost; a larger one is never
    removed (check_no_larger_merge refuses runs that would make one). Two shards merging at once
    may both get here; a file the other already removed is fine.
    """
    kept = int(os.path.basename(keep_path)[len("samples_"):].split("x")[0])
    for name, count in merged_sample_counts(out_dir).items():
        path = os.path.join(out_dir, name)
        with contextlib.suppress(FileNotFoundError):
            if count < kept and not os.path.samefile(path, keep_path):
                os.unlink(path)
