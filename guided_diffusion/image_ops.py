"""Image files and pixels: which files are images, decoding, ADM's preprocessing, float <-> uint8.

One home for these rules: the training loader, dataset preparation, the
evaluations and the analyses all read images through here, so a prepared
dataset and an on-the-fly loaded folder give the same pixels and every
sample is turned into bytes the same way (ADM's truncation).
"""

import io
import math
import os
import random

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ("bmp", "gif", "jpeg", "jpg", "png", "tif", "tiff", "webp")

# Exceptions PIL raises for a file that is not a readable image.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def is_image_file(name):
    """Whether a file name has an image extension; hidden files (temp files of atomic writes) are not images."""
    base = os.path.basename(str(name))
    return not base.startswith(".") and base.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and "." in base


class ImageDecodeError(ValueError):
    """Bytes that are not a readable image: `origin` names where they came from, `reason` says why."""

    def __init__(self, origin, reason):
        super().__init__(f"cannot read image {origin}: {reason}")
        self.origin = origin
        self.reason = reason


def decode_image(data, origin):
    """RGB PIL image from encoded bytes; bytes that cannot be decoded raise ImageDecodeError naming `origin` and why.

    Every reader of image files goes through here: PIL's own error for bytes in
    memory names only `<_io.BytesIO object at 0x...>`. An EXIF orientation tag is
    applied, so a photo stored sideways with "rotate 90" is read upright, as every
    viewer shows it (ADM's loader ignored the tag; images without one, such as the
    paper's PNG datasets, read the same either way).
    """
    try:
        pil_image = Image.open(io.BytesIO(data))
        pil_image.load()
    except UnidentifiedImageError:
        raise ImageDecodeError(origin, "not in an image format PIL can decode") from None
    except DECODE_ERRORS as e:
        raise ImageDecodeError(origin, f"{type(e).__name__}: {e}") from None
    try:
        return to_rgb(ImageOps.exif_transpose(pil_image))
    except UnsupportedDepthError as e:
        raise ImageDecodeError(origin, str(e)) from None


def to_uint8_nhwc(batch):
    """ADM's conversion of [-1, 1] samples (torch NCHW) to bytes (numpy NHWC): scale to [0, 255], clamp, truncate."""
    return ((batch + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def from_uint8_nhwc(images, device="cpu"):
    """uint8 NHWC images as the float NCHW [-1, 1] batch a model takes (ADM's loader scaling)."""
    array = np.asarray(images, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(device)


def _shrink_with_box(pil_image, min_side):
    # Repeated 2x BOX downsampling before the final BICUBIC resize avoids aliasing
    # on large sources; ADM does the same.
    while min(*pil_image.size) >= 2 * min_side:
        pil_image = pil_image.resize(
            tuple(x // 2 for x in pil_image.size), resample=Image.BOX
        )
    return pil_image


def _resize_smaller_side(pil_image, target):
    scale = target / min(*pil_image.size)
    return pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )


def center_crop_arr(pil_image, image_size):
    """Resize so the smaller side is `image_size`, then take the centre square (uint8 HWC)."""
    pil_image = _shrink_with_box(pil_image, image_size)
    arr = np.array(_resize_smaller_side(pil_image, image_size))
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def random_crop_arr(pil_image, image_size, min_crop_frac=0.8, max_crop_frac=1.0, rng=random):
    """Resize the smaller side to a random size in [image_size/max, image_size/min], then crop randomly."""
    min_smaller = math.ceil(image_size / max_crop_frac)
    max_smaller = math.ceil(image_size / min_crop_frac)
    smaller = rng.randrange(min_smaller, max_smaller + 1)
    pil_image = _shrink_with_box(pil_image, smaller)
    arr = np.array(_resize_smaller_side(pil_image, smaller))
    top = rng.randrange(arr.shape[0] - image_size + 1)
    left = rng.randrange(arr.shape[1] - image_size + 1)
    return arr[top : top + image_size, left : left + image_size]


# PIL's modes of 16-bit grayscale pixels (PNG, TIFF); their full scale is 65535 whatever the image holds.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class UnsupportedDepthError(ValueError):
    """Pixels whose bit depth gives no fixed 8-bit scale."""


def to_rgb(pil_image):
    """Convert grayscale, palette, RGBA (onto black, as PIL does) and 16-bit images to 8-bit RGB.

    A pixel's value is scaled by its bit depth's full scale, never by the image's own
    maximum: otherwise a dark 16-bit image (all values <= 255) would read as bright.
    """
    # PNG has no 32-bit samples: mode "I" from a PNG (as older Pillow opens 16-bit ones) holds 16-bit values.
    if pil_image.mode in SIXTEEN_BIT_MODES or (pil_image.mode == "I" and pil_image.format == "PNG"):
        arr = np.asarray(pil_image, dtype=np.float64)
        pil_image = Image.fromarray(np.clip(arr / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif pil_image.mode == "I":
        raise UnsupportedDepthError(
            "32-bit integer pixels have no fixed 8-bit scale; convert the image to 8 or 16 bits per channel"
        )
    if pil_image.mode != "RGB":
        pil_image = pil_image.convert("RGB")
    return pil_image
