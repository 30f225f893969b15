"""MetFaces (Karras et al., 2020): 1,336 aligned faces from artworks, 1024x1024 PNG.

Accepts the aligned `images` folder, the metfaces-dataset root holding it
(the `unprocessed` originals are then ignored), or a zip of either.
"""

from datasets.common import DatasetSpec
from datasets.sources import image_collection_source

ALIGNED_FOLDER = "images"


def open_source(path):
    return image_collection_source(path, subtree=ALIGNED_FOLDER)


SPEC = DatasetSpec(
    name="metfaces",
    expected_count=1_336,
    default_image_size=256,
    class_cond=False,
    open_source=open_source,
    about="MetFaces, 1,336 aligned faces (folder or zip of images)",
)
