"""CIFAR-10 (Krizhevsky, 2009): the 50,000 training images, class-conditional.

Reads `cifar-10-python.tar.gz` (or its extracted `cifar-10-batches-py`
folder): pickled batches `data_batch_1`..`data_batch_5`, each a dict with
b"data" (N x 3072 uint8: the red, green and blue 32x32 planes of each image)
and b"labels", plus `batches.meta` with b"label_names".

Outputs are named `{class name}_{index:05d}.png`, index counting through the
batches in order, so ADM's class rule (the prefix before the first underscore)
labels them. ADM sorts class names to get label ids; for CIFAR-10 the sorted
names happen to be in CIFAR's own label order, so the ids agree.

CIFAR-10 stays at its native 32x32 unless an image size is given.
"""

import pickle
import tarfile
from pathlib import Path

import numpy as np

from datasets.common import DatasetSpec
from datasets.sources import (
    ArrayPayload,
    DatasetSourceError,
    SourceItem,
    check_unique_output_names,
    open_tar,
)

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
META_FILE = "batches.meta"
SIDE = 32


def _read_pickles_from_tar(path):
    wanted = set(TRAIN_BATCHES) | {META_FILE}
    found = {}
    with open_tar(path, path) as archive:
        for member in archive:
            base = Path(member.name).name
            if member.isfile() and base in wanted:
                found[base] = archive.extractfile(member).read()
    return found


def _read_pickles_from_folder(path):
    return {name: (path / name).read_bytes() for name in (*TRAIN_BATCHES, META_FILE) if (path / name).exists()}


def _unpickle(data, origin):
    try:
        return pickle.loads(data, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DatasetSourceError(f"cannot unpickle {origin}: {error}") from error


def _field(batch, key, origin):
    if key not in batch:
        raise DatasetSourceError(f"{origin} has no {key!r} entry; is this the python version of CIFAR-10?")
    return batch[key]


class Cifar10Source:
    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"source not found: {path}")
        if path.is_dir():
            folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
            pickles = _read_pickles_from_folder(folder)
        elif tarfile.is_tarfile(path):
            pickles = _read_pickles_from_tar(path)
        else:
            raise DatasetSourceError(
                f"unrecognised source format: {path} (expected cifar-10-python.tar.gz or cifar-10-batches-py/)"
            )
        missing = [name for name in (*TRAIN_BATCHES, META_FILE) if name not in pickles]
        if missing:
            raise DatasetSourceError(f"{path} lacks {', '.join(missing)} (expected the python version of CIFAR-10)")
        self.description = str(path.resolve())
        origin = f"{path}:{META_FILE}"
        names = [n.decode() for n in _field(_unpickle(pickles[META_FILE], origin), b"label_names", origin)]
        if any("_" in name or not name for name in names):
            raise DatasetSourceError(f"{origin}: class names must be non-empty without underscores, got {names}")
        self._items = []
        for batch_name in TRAIN_BATCHES:
            origin = f"{path}:{batch_name}"
            batch = _unpickle(pickles[batch_name], origin)
            data = np.asarray(_field(batch, b"data", origin), dtype=np.uint8)
            labels = list(_field(batch, b"labels", origin))
            if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(labels) != data.shape[0]:
                raise DatasetSourceError(
                    f"{origin}: expected N x {3 * SIDE * SIDE} pixels and N labels, "
                    f"got {data.shape} and {len(labels)}"
                )
            if labels and not 0 <= min(labels) <= max(labels) < len(names):
                raise DatasetSourceError(f"{origin}: labels outside 0..{len(names) - 1}")
            pixels = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
            for row, label in enumerate(labels):
                index = len(self._items)
                self._items.append(
                    SourceItem(
                        out_name=f"{names[label]}_{index:05d}.png",
                        origin=f"{origin}[{row}]",
                        payload=ArrayPayload(np.ascontiguousarray(pixels[row])),
                    )
                )
        check_unique_output_names(self._items)

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)


SPEC = DatasetSpec(
    name="cifar10",
    expected_count=50_000,
    default_image_size=SIDE,
    class_cond=True,
    open_source=Cifar10Source,
    about="CIFAR-10 training set, 50,000 images in 10 classes (cifar-10-python.tar.gz)",
)
