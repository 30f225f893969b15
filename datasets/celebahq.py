"""CelebA-HQ (Karras et al., 2018): 30,000 faces, 1024x1024.

Accepts a folder, zip or tar of the images as produced by Progressive GAN's
scripts or as distributed resized (for example celeba_hq_256). Given the
CelebAMask-HQ root, only its CelebA-HQ-img folder is used, not the masks.
"""

from datasets.common import DatasetSpec
from datasets.sources import image_collection_source

CELEBAMASK_IMAGES_FOLDER = "CelebA-HQ-img"


def open_source(path):
    return image_collection_source(path, subtree=CELEBAMASK_IMAGES_FOLDER)


SPEC = DatasetSpec(
    name="celebahq",
    expected_count=30_000,
    default_image_size=256,
    class_cond=False,
    open_source=open_source,
    about="CelebA-HQ, 30,000 faces (folder, zip or tar of images)",
)
