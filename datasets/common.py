"""Turning a source of images into a folder the training loader reads.

Every output is an RGB PNG with ADM's resize-and-centre-crop, written to a
temporary file and renamed into place, so an output that exists is complete.
A re-run skips existing outputs (an interrupted run resumes, a finished one is
a no-op that touches nothing), cleans up temporaries a killed run left, and
ends by writing `SHA256SUMS` (one line per output, `sha256sum -c` format) and
`manifest.json`, the latter last.
"""

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from guided_diffusion.run import run_lock
from guided_diffusion.run.atomic import atomic_write_bytes, remove_stale_temps
from guided_diffusion.dist_util import exit_when_parent_dies
from guided_diffusion.image_ops import ImageDecodeError, center_crop_arr, to_rgb
from datasets.sources import DatasetSourceError, close_cached_archives

MANIFEST_NAME = "manifest.json"
CHECKSUMS_NAME = "SHA256SUMS"
MANIFEST_FORMAT = 1
PREPROCESSING = (
    "ADM center_crop_arr: BOX halving while the image is at least twice the target, "
    "BICUBIC resize of the smaller side to image_size, centre crop; RGB 8-bit PNG"
)
REPORTED_UNREADABLE = 5
ITEMS_PER_TASK = 16


class OutputFolderError(ValueError):
    """The output folder holds a different dataset or image size, or an unreadable manifest."""


class UnreadableImagesError(ValueError):
    """Raised in strict mode when some source images could not be decoded."""


class DatasetPreparationWarning(UserWarning):
    """Something the user should look at: unreadable images, an unexpected count, stray files."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    expected_count: int
    default_image_size: int
    class_cond: bool
    open_source: object  # callable: source path -> source (see sources.py)
    about: str


@dataclass
class PrepareResult:
    dataset: str
    out_dir: str
    image_size: int
    count: int
    expected_count: int
    written: int
    already_present: int
    unreadable: list = field(default_factory=list)  # (origin, error message) pairs
    stray_images: list = field(default_factory=list)
    class_map: dict = None
    content_sha256: str = ""

    def summary(self):
        return (
            f"{self.dataset}: {self.count:,} images at {self.image_size}x{self.image_size} in "
            f"{self.out_dir} (expected {self.expected_count:,}; written now {self.written:,}, "
            f"already present {self.already_present:,}, unreadable {len(self.unreadable):,})"
        )


def unreadable_summary(unreadable):
    shown = "; ".join(f"{origin} ({message})" for origin, message in unreadable[:REPORTED_UNREADABLE])
    more = len(unreadable) - REPORTED_UNREADABLE
    return f"{len(unreadable)} unreadable source image(s), skipped: {shown}" + (
        f"; and {more} more (all listed in {MANIFEST_NAME})" if more > 0 else ""
    )


def label_of(out_name):
    """ADM's class rule: the file-name prefix before the first underscore."""
    return Path(out_name).name.split("_")[0]


def class_map_of(out_names):
    return {label: index for index, label in enumerate(sorted({label_of(n) for n in out_names}))}


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def convert_one(payload, out_path, image_size):
    """Decode, preprocess and write one image; returns (sha256, None) or (None, error message)."""
    try:
        with payload.open_image() as image:
            image.load()
            pixels = center_crop_arr(to_rgb(image), image_size)
    except ImageDecodeError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - any decoder failure means an unreadable source image
        return None, f"{type(error).__name__}: {error}"
    data = encode_png(pixels)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, data)
    return hashlib.sha256(data).hexdigest(), None


def convert_batch(tasks, image_size):
    return [(out_name, origin, *convert_one(payload, out_path, image_size))
            for out_name, origin, out_path, payload in tasks]


def scan_output_folder(out_dir):
    """Existing PNG outputs (relative POSIX paths), recursively."""
    outputs = set()
    for directory, _, files in os.walk(out_dir):
        for file_name in files:
            if file_name.lower().endswith(".png") and not file_name.startswith("."):
                outputs.add((Path(directory) / file_name).relative_to(out_dir).as_posix())
    return outputs


def remove_stale_temps_of_outputs(out_dir):
    """Delete the temp files of writes that a killed run left anywhere in `out_dir`; hold its run lock."""
    return remove_stale_temps(out_dir, recursive=True)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise OutputFolderError(f"unreadable {path}: {error}") from error


def check_output_folder(out_dir, identity):
    """Refuse to mix datasets, sizes or generator settings in one folder; returns the existing manifest or None."""
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return None
    manifest = read_json(manifest_path)
    held = {key: manifest.get(key) for key in identity}
    if held != identity:
        described = ", ".join(f"{key}={value!r}" for key, value in held.items())
        asked = ", ".join(f"{key}={value!r}" for key, value in identity.items())
        raise OutputFolderError(
            f"{out_dir} already holds {described} (per {manifest_path}); asked for {asked}: use another output folder"
        )
    return manifest


def read_checksums(out_dir):
    path = out_dir / CHECKSUMS_NAME
    if not path.exists():
        return {}
    checksums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name:
            checksums[name] = digest
    return checksums


def write_if_changed(path, data):
    if path.exists() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def manifest_bytes(manifest):
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _SerialRunner:
    """Runs batches in this process: no start-up cost, used for workers=1."""

    def __init__(self, image_size):
        self._image_size = image_size
        self._done = []

    def submit(self, batch):
        self._done.append(convert_batch(batch, self._image_size))

    def completed(self, wait_for_all=False):
        done, self._done = self._done, []
        return done

    def close(self):
        close_cached_archives()


class _PoolRunner:
    """Runs batches on worker processes, never holding more than a few batches per worker.

    The bound matters for tar sources, whose payloads are image bytes read in
    this process: an unbounded queue would read the whole archive into memory.
    """

    def __init__(self, image_size, workers):
        self._image_size = image_size
        self._max_in_flight = 4 * workers
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            # A parent killed without cleanup (SIGKILL, OOM) would leave workers waiting forever.
            initializer=exit_when_parent_dies,
            initargs=(os.getpid(),),
        )
        self._in_flight = set()
        self._done = []

    def submit(self, batch):
        while len(self._in_flight) >= self._max_in_flight:
            self._collect(concurrent.futures.FIRST_COMPLETED)
        self._in_flight.add(self._executor.submit(convert_batch, batch, self._image_size))

    def _collect(self, mode):
        finished, self._in_flight = concurrent.futures.wait(self._in_flight, return_when=mode)
        self._done.extend(future.result() for future in finished)

    def completed(self, wait_for_all=False):
        if wait_for_all and self._in_flight:
            self._collect(concurrent.futures.ALL_COMPLETED)
        done, self._done = self._done, []
        return done

    def close(self):
        self._executor.shutdown(wait=True, cancel_futures=True)


def prepare(
    source,
    out_dir,
    *,
    dataset,
    image_size,
    expected_count,
    class_cond,
    workers=None,
    strict=False,
    progress=True,
    settings=None,
):
    """Convert every item of `source` into `out_dir`; returns a `PrepareResult`.

    Unreadable source images are skipped and reported (warning and result), or
    raise `UnreadableImagesError` when `strict`; the manifest is then not written.
    `settings` (for example a generator seed) are recorded in the manifest and,
    like the dataset and image size, must match those of an earlier run in `out_dir`.
    """
    if image_size < 1:
        raise ValueError(f"--image_size must be a positive integer, got {image_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers}")
    out_dir = Path(out_dir)
    # One run prepares a folder at a time; under the lock, temps of killed runs can go.
    with run_lock.hold(out_dir, "output folder", clean=remove_stale_temps_of_outputs):
        return _prepare_into(
            source, out_dir, dataset=dataset, image_size=image_size, expected_count=expected_count,
            class_cond=class_cond, workers=workers, strict=strict, progress=progress, settings=settings,
        )


def _prepare_into(source, out_dir, *, dataset, image_size, expected_count, class_cond, workers, strict, progress, settings):
    identity = {"dataset": dataset, "image_size": image_size, **(settings or {})}
    previous_manifest = check_output_folder(out_dir, identity)
    identity = {"format": MANIFEST_FORMAT, **identity, "source": source.description}
    existing = scan_output_folder(out_dir)
    if previous_manifest is None:
        # Marks the folder as this dataset at this size before any image lands,
        # so that an interrupted run cannot be resumed with other settings.
        atomic_write_bytes(out_dir / MANIFEST_NAME, manifest_bytes({**identity, "complete": False}))

    previous_checksums = read_checksums(out_dir)
    checksums, unreadable, seen = {}, [], set()
    written = already_present = 0
    workers = workers or default_workers()
    runner = _SerialRunner(image_size) if workers == 1 else _PoolRunner(image_size, workers)
    total = len(source) if hasattr(source, "__len__") else expected_count
    bar = tqdm(total=total, desc=dataset, unit="img", disable=not progress, smoothing=0.05)

    def absorb(batches):
        nonlocal written
        for results in batches:
            for out_name, origin, digest, error in results:
                if error is None:
                    checksums[out_name] = digest
                    written += 1
                else:
                    unreadable.append((origin, error))
            bar.update(len(results))

    try:
        batch = []
        for item in source:
            if item.out_name in seen:
                raise DatasetSourceError(
                    f"two source images map to the same output {item.out_name} (second: {item.origin})"
                )
            seen.add(item.out_name)
            if item.out_name in existing:
                checksums[item.out_name] = previous_checksums.get(item.out_name) or sha256_file(
                    out_dir / item.out_name
                )
                already_present += 1
                bar.update(1)
                continue
            batch.append((item.out_name, item.origin, str(out_dir / item.out_name), item.payload.materialize()))
            if len(batch) == ITEMS_PER_TASK:
                runner.submit(batch)
                batch = []
                absorb(runner.completed())
        if batch:
            runner.submit(batch)
        absorb(runner.completed(wait_for_all=True))
    finally:
        runner.close()
        bar.close()

    unreadable.sort()
    stray = sorted(existing - seen)
    count = len(checksums)
    result = PrepareResult(
        dataset=dataset,
        out_dir=str(out_dir),
        image_size=image_size,
        count=count,
        expected_count=expected_count,
        written=written,
        already_present=already_present,
        unreadable=unreadable,
        stray_images=stray,
        class_map=class_map_of(checksums) if class_cond else None,
    )
    if unreadable:
        if strict:
            raise UnreadableImagesError(unreadable_summary(unreadable))
        warnings.warn(unreadable_summary(unreadable), DatasetPreparationWarning, stacklevel=2)
    if count != expected_count:
        warnings.warn(
            f"{dataset}: {count:,} images prepared but the dataset has {expected_count:,}; "
            f"check that the source is complete and is the right release",
            DatasetPreparationWarning,
            stacklevel=2,
        )
    if stray:
        warnings.warn(
            f"{out_dir} holds {len(stray)} image(s) not made from this source, which the loader "
            f"will also read (first: {stray[0]})",
            DatasetPreparationWarning,
            stacklevel=2,
        )

    checksum_text = "".join(f"{checksums[name]}  {name}\n" for name in sorted(checksums)).encode()
    result.content_sha256 = hashlib.sha256(checksum_text).hexdigest()
    write_if_changed(out_dir / CHECKSUMS_NAME, checksum_text)
    manifest = {
        **identity,
        "complete": True,
        "preprocessing": PREPROCESSING,
        "count": count,
        "expected_count": expected_count,
        "class_cond": class_cond,
        "class_map": result.class_map,
        "unreadable": [{"source": origin, "error": message} for origin, message in unreadable],
        "checksums_file": CHECKSUMS_NAME,
        "content_sha256": result.content_sha256,
    }
    if class_cond:
        counts = {}
        for name in checksums:
            counts[label_of(name)] = counts.get(label_of(name), 0) + 1
        manifest["class_counts"] = dict(sorted(counts.items()))
    write_if_changed(out_dir / MANIFEST_NAME, manifest_bytes(manifest))
    return result
