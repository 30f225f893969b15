"""ADM's image-folder loader: each rank reads its own shard and yields batches forever.

`load_data(...)` yields `(images, {"y": labels})` where images are NCHW float32 in [-1, 1];
"y" is present only with `class_cond`. Files are listed recursively through blobfile
(local paths, gs://, az://). With `class_cond`, a file's class is the part of its name
before the first underscore (`cat_0001.png` -> "cat"), and classes are numbered in sorted
order of their names.
"""

import hashlib
import random

import blobfile as bf
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .image_ops import IMAGE_EXTENSIONS, center_crop_arr, decode_image, is_image_file, random_crop_arr


class ImageLoadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def list_image_files_recursively(data_dir):
    """Sorted paths of every image file under `data_dir` (blobfile paths)."""
    results = []
    for entry in sorted(bf.listdir(data_dir)):
        full_path = bf.join(data_dir, entry)
        if is_image_file(entry):
            results.append(full_path)
        elif bf.isdir(full_path):
            results.extend(list_image_files_recursively(full_path))
    return results


def class_name_of(path):
    return bf.basename(path).split("_")[0]


def class_labels(paths):
    """(labels, sorted class names) where labels[i] indexes the class of paths[i]."""
    unprefixed = [p for p in paths if "_" not in bf.basename(p)]
    if unprefixed:
        raise ValueError(
            f"--class_cond: {len(unprefixed)} of {len(paths)} image names carry no class prefix "
            f"(expected CLASS_anything.ext), e.g. {unprefixed[0]}"
        )
    names = [class_name_of(p) for p in paths]
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    return [index[name] for name in names], classes


def shard(items, rank, world_size):
    """Rank `rank`'s share of `items` (every world_size-th item, as ADM does)."""
    return items[rank::world_size]


def shard_digest(paths):
    """A short fingerprint of a list of files, to compare the shards that ranks read."""
    return hashlib.sha1("\n".join(paths).encode("utf-8")).hexdigest()[:16]


def _decode_image(path):
    try:
        with bf.BlobFile(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageLoadError(f"cannot read image {path}: {e.strerror or e}") from None
    try:
        return decode_image(data, path)
    except ValueError as e:
        raise ImageLoadError(str(e)) from None


class ImageDataset(Dataset):
    def __init__(self, resolution, image_paths, classes=None, random_crop=False, random_flip=True):
        if classes is not None and len(classes) != len(image_paths):
            raise ValueError(f"{len(classes)} labels for {len(image_paths)} images")
        self.resolution = resolution
        self.local_images = image_paths
        self.local_classes = classes
        self.random_crop = random_crop
        self.random_flip = random_flip

    def __len__(self):
        return len(self.local_images)

    def __getitem__(self, idx):
        path = self.local_images[idx]
        pil_image = _decode_image(path)
        if self.random_crop:
            arr = random_crop_arr(pil_image, self.resolution)
        else:
            arr = center_crop_arr(pil_image, self.resolution)
        if self.random_flip and random.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr.astype(np.float32) / 127.5 - 1
        out_dict = {}
        if self.local_classes is not None:
            out_dict["y"] = np.int64(self.local_classes[idx])
        return np.ascontiguousarray(np.transpose(arr, [2, 0, 1])), out_dict


def _one_line(error):
    """The original message of an ImageLoadError re-raised by a DataLoader worker."""
    last = str(error).strip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


class InfiniteLoader:
    """Batches from a DataLoader, restarting it at the end of every epoch; `.dataset` is this rank's shard."""

    def __init__(self, loader):
        self.loader = loader
        self.dataset = loader.dataset
        self._iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._iterator is None:
                self._iterator = iter(self.loader)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
            except ImageLoadError as e:
                raise ImageLoadError(_one_line(e)) from None


def load_data(
    *,
    data_dir,
    batch_size,
    image_size,
    class_cond=False,
    deterministic=False,
    random_crop=False,
    random_flip=True,
    num_workers=1,
    rank=0,
    world_size=1,
    num_classes=None,
):
    """An endless iterator of (images, cond) batches from this rank's shard of `data_dir`.

    :param deterministic: keep file order instead of reshuffling every epoch.
    :param num_classes: with class_cond, the model's number of classes; more classes in the
        folder is an error.
    """
    if not data_dir:
        raise ValueError("--data_dir is required: a folder (or gs://, az:// URL) of images")
    if not bf.exists(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir}: no such directory")
    if not bf.isdir(data_dir):
        raise ValueError(f"--data_dir {data_dir}: not a directory")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {batch_size}")
    all_files = list_image_files_recursively(data_dir)
    if not all_files:
        raise ValueError(
            f"--data_dir {data_dir} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    classes = None
    if class_cond:
        classes, class_names = class_labels(all_files)
        if num_classes is not None and len(class_names) > num_classes:
            raise ValueError(
                f"--data_dir {data_dir} has {len(class_names)} classes but --num_classes is {num_classes}"
            )
        classes = shard(classes, rank, world_size)
    local_files = shard(all_files, rank, world_size)
    if len(local_files) < batch_size:
        raise ValueError(
            f"--data_dir {data_dir}: rank {rank} of {world_size} gets {len(local_files)} images, "
            f"fewer than --batch_size {batch_size}"
        )
    dataset = ImageDataset(
        image_size, local_files, classes=classes, random_crop=random_crop, random_flip=random_flip
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=not deterministic,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    return InfiniteLoader(loader)
