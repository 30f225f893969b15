"""AFHQ-dog (Choi et al., 2020): the dog class of AFHQ's training split, 512x512.

Accepts the afhq root (or the folder above it), its train/dog folder, or
stargan-v2's afhq.zip; only train/dog is used, never val/ or the other animals.
"""

from datasets.common import DatasetSpec
from datasets.sources import image_collection_source

DOG_TRAIN_FOLDER = "train/dog"


def open_source(path):
    return image_collection_source(path, subtree=DOG_TRAIN_FOLDER, subtree_required=True)


SPEC = DatasetSpec(
    name="afhq_dog",
    # Training dogs in both the AFHQ v1 and v2 releases.
    expected_count=4_739,
    default_image_size=256,
    class_cond=False,
    open_source=open_source,
    about="AFHQ-dog, 4,739 training dogs (afhq root, its train/dog folder, or afhq.zip)",
)
