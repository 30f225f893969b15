"""Image sets read in uint8 (N, H, W, 3) batches: real images for the model and sample sets for statistics.

A folder of image files is read through ADM's resize-and-centre-crop
(`image_ops.center_crop_arr`) to the requested size, as the training loader
does, so the files may have any size. An `.npz` (`arr_0`) or a folder of
sample batches is streamed by `evaluations.sources`; its images are
centre-cropped too where their size differs from the requested one.
"""

import os

import numpy as np
from PIL import Image

from evaluations.sources import open_image_source
from guided_diffusion.image_ops import IMAGE_EXTENSIONS, center_crop_arr, decode_image, is_image_file


def _image_files(folder):
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in sorted(names) if is_image_file(n))
    return files


def _holds_npz(folder):
    return any(n.endswith(".npz") and not n.startswith(".") for n in os.listdir(folder))


def _crop_to(image, image_size):
    if image.shape[0] == image.shape[1] == image_size:
        return image
    return center_crop_arr(Image.fromarray(image), image_size)


def image_batches(path, batch_size, image_size=None, limit=None):
    """Yield uint8 (B, H, W, 3) batches of the images at `path`, at most `limit` images in all.

    `image_size` None keeps an npz's size and, for an image folder, takes the
    size of its first image.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if os.path.isdir(path) and not _holds_npz(path):
        yield from _folder_batches(path, batch_size, image_size, limit)
        return
    remaining = limit
    for batch in open_image_source(path).batches(batch_size):
        if remaining is not None:
            if remaining <= 0:
                return
            batch = batch[:remaining]
            remaining -= batch.shape[0]
        if image_size is not None and batch.shape[1:3] != (image_size, image_size):
            batch = np.stack([_crop_to(image, image_size) for image in batch])
        yield batch


def _folder_batches(folder, batch_size, image_size, limit):
    files = _image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no .npz")
    files = files[:limit] if limit is not None else files
    for start in range(0, len(files), batch_size):
        batch = []
        for file in files[start : start + batch_size]:
            with open(file, "rb") as f:
                image = np.asarray(decode_image(f.read(), file))
            if image_size is None:
                image_size = min(image.shape[:2])
            batch.append(_crop_to(image, image_size))
        yield np.stack(batch)


def read_images(path, num_images, image_size):
    """The first `num_images` images at `path` as one uint8 (N, image_size, image_size, 3) array."""
    batches = list(image_batches(path, batch_size=num_images, image_size=image_size, limit=num_images))
    images = np.concatenate(batches) if batches else np.zeros((0, image_size, image_size, 3), np.uint8)
    if images.shape[0] < num_images:
        raise ValueError(f"{path!r} holds {images.shape[0]} images, fewer than the {num_images} asked for")
    return images
