"""Shared fixtures: a tiny UNet's flags and small generated image folders."""

import numpy as np
import pytest
from PIL import Image

from scripts.benchmarks.gpu_check_base import install_blobfile_shim

# The GPU machines have no blobfile: the project's local-path stand-in, as gpu_check uses it.
install_blobfile_shim()

from tests.tiny import TINY_MODEL_FLAGS  # noqa: E402  (after the stand-in: it imports blobfile)


def write_image_folder(root, names, size=(20, 24), seed=0):
    """Random RGB images under `root` with the given relative file names (format from the extension)."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny_model_flags():
    """A fresh copy of TINY_MODEL_FLAGS (tests may change it)."""
    return dict(TINY_MODEL_FLAGS)


@pytest.fixture
def image_folder_factory(tmp_path):
    """`make(names, size=(w, h), seed=0)` writes images into a new folder and returns the folder."""
    counter = iter(range(1000))

    def make(names, size=(20, 24), seed=0):
        root = tmp_path / f"images{next(counter)}"
        root.mkdir()
        write_image_folder(root, names, size=size, seed=seed)
        return root

    return make


@pytest.fixture(scope="session")
def class_image_folder(tmp_path_factory):
    """24 images of two classes ("cat_*", "dog_*"), PNG and JPEG, some in a subfolder; read-only."""
    root = tmp_path_factory.mktemp("class_images")
    names = [f"cat_{i:03d}.png" for i in range(8)] + [f"dog_{i:03d}.png" for i in range(8)]
    names += [f"sub/cat_{i:03d}.jpg" for i in range(8, 12)] + [f"sub/dog_{i:03d}.jpg" for i in range(8, 12)]
    write_image_folder(root, names)
    return root
