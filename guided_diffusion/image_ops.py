"""ADM's image preprocessing: resize then crop to a square of `image_size`.

Shared by the training loader and by dataset preparation so that a prepared
dataset and an on-the-fly loaded folder give the same pixels.
"""

import math
import random

import numpy as np
from PIL import Image


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


def to_rgb(pil_image):
    """Convert grayscale, palette, RGBA (onto black, as PIL does) and 16-bit images to 8-bit RGB."""
    if pil_image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(pil_image, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        pil_image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if pil_image.mode != "RGB":
        pil_image = pil_image.convert("RGB")
    return pil_image
