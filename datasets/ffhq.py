"""FFHQ (Karras et al., 2019): 70,000 aligned faces, 1024x1024 PNG.

Accepts the `images1024x1024` folder, the ffhq-dataset root holding it (other
folders such as thumbnails128x128 are then ignored), or a zip of either.
"""

from datasets.common import DatasetSpec
from datasets.sources import image_collection_source

IMAGES_FOLDER = "images1024x1024"


def open_source(path):
    return image_collection_source(path, subtree=IMAGES_FOLDER)


SPEC = DatasetSpec(
    name="ffhq",
    expected_count=70_000,
    default_image_size=256,
    class_cond=False,
    open_source=open_source,
    about="FFHQ, 70,000 faces (folder or zip of images1024x1024)",
)
