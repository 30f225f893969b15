"""Dataset preparation: the paper's six datasets and an embedded default, as folders of PNGs.

`prepare_dataset(name, source, out_dir, ...)` is the entry point; each dataset
lives in its own module, named in `DATASET_MODULES`.
"""

import importlib
from pathlib import Path

# common.prepare, not prepare: importing the CLI module datasets.prepare rebinds that name here.
from datasets import common
from datasets.common import (
    DatasetPreparationWarning,
    OutputFolderError,
    PrepareResult,
    UnreadableImagesError,
)
from datasets.sources import DatasetSourceError

DATASET_MODULES = {
    "ffhq": "datasets.ffhq",
    "celebahq": "datasets.celebahq",
    "afhq_dog": "datasets.afhq_dog",
    "metfaces": "datasets.metfaces",
    "cifar10": "datasets.cifar10",
    "imagenet": "datasets.imagenet",
    "embedded": "datasets.embedded",
}
GENERATED_DATASETS = frozenset({"embedded"})


class UnknownDatasetError(ValueError):
    """A dataset name that prepare.py does not know."""


def dataset_spec(name):
    if name not in DATASET_MODULES:
        raise UnknownDatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASET_MODULES))}")
    return importlib.import_module(DATASET_MODULES[name]).SPEC


def prepare_dataset(
    name,
    source,
    out_dir,
    *,
    image_size=None,
    workers=None,
    strict=False,
    seed=None,
    num_images=None,
    progress=True,
):
    """Prepare dataset `name` from `source` (a path; None for the embedded dataset) into `out_dir`.

    `image_size` defaults to the dataset's (256; 32 for CIFAR-10 and the
    embedded faces). `seed` and `num_images` apply only to the embedded
    dataset. Returns a `PrepareResult`.
    """
    spec = dataset_spec(name)
    image_size = spec.default_image_size if image_size is None else image_size
    if name in GENERATED_DATASETS:
        if source is not None:
            raise ValueError(f"the {name} dataset is generated and takes no source, got {source}")
        embedded = importlib.import_module(DATASET_MODULES[name])
        seed = 0 if seed is None else seed
        num_images = embedded.DEFAULT_NUM_IMAGES if num_images is None else num_images
        return common.prepare(
            embedded.EmbeddedSource(seed, num_images, image_size),
            out_dir,
            dataset=name,
            image_size=image_size,
            expected_count=num_images,
            class_cond=spec.class_cond,
            workers=workers,
            strict=strict,
            progress=progress,
            settings={"seed": seed},
        )
    for flag, value in (("--seed", seed), ("--num_images", num_images)):
        if value is not None:
            raise ValueError(f"{flag} applies only to generated datasets ({', '.join(sorted(GENERATED_DATASETS))})")
    if source is None:
        raise ValueError(f"the {name} dataset needs a source path")
    source_root, out_root = Path(source).resolve(), Path(out_dir).resolve()
    nested = out_root == source_root or source_root in out_root.parents or out_root in source_root.parents
    if source_root.is_dir() and nested:
        # Outputs inside the source would be read back as source images on the next run, and
        # sources inside the output would be read by the training loader as training images.
        raise ValueError(f"the output folder {out_dir} and the source folder {source} must not contain each other")
    return common.prepare(
        spec.open_source(source),
        out_dir,
        dataset=name,
        image_size=image_size,
        expected_count=spec.expected_count,
        class_cond=spec.class_cond,
        workers=workers,
        strict=strict,
        progress=progress,
    )


__all__ = [
    "DATASET_MODULES",
    "DatasetPreparationWarning",
    "DatasetSourceError",
    "OutputFolderError",
    "PrepareResult",
    "UnknownDatasetError",
    "UnreadableImagesError",
    "dataset_spec",
    "prepare_dataset",
]
