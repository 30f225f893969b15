"""Prepare a dataset as a folder of PNGs that scripts/image_train.py reads with --data_dir.

    python -m datasets.prepare <dataset> <source> <out_dir> [--image_size N] [--workers N] [--strict]
    python -m datasets.prepare embedded <out_dir> [--image_size N] [--seed S] [--num_images N]

(`python datasets/prepare.py ...` works the same once the project is installed.)

See datasets/README.md for where to download each dataset.
"""

import argparse
import sys
import warnings

from datasets import (
    DATASET_MODULES,
    GENERATED_DATASETS,
    prepare_dataset,
)
from guided_diffusion.run.command_line import ArgumentParser


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help=f"one of: {', '.join(sorted(DATASET_MODULES))}")
    parser.add_argument("paths", nargs="+", metavar="path", help="<source> <out_dir>; for embedded only <out_dir>")
    parser.add_argument(
        "--image_size", type=int, default=None, help="output side in pixels (default 256; 32 for cifar10 and embedded)"
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--strict", action="store_true", help="fail if any source image is unreadable")
    parser.add_argument("--seed", type=int, default=None, help="embedded only: generator seed (default 0)")
    parser.add_argument("--num_images", type=int, default=None, help="embedded only: number of images (default 4096)")
    return parser.parse_args(argv)


def split_paths(dataset, paths):
    wanted = 1 if dataset in GENERATED_DATASETS else 2
    if len(paths) != wanted:
        usage = "<out_dir>" if wanted == 1 else "<source> <out_dir>"
        raise ValueError(f"{dataset} takes {usage}, got {len(paths)} path(s): {' '.join(paths)}")
    return (None, paths[0]) if wanted == 1 else (paths[0], paths[1])


def main(argv=None):
    args = parse_args(argv)
    try:
        source, out_dir = split_paths(args.dataset, args.paths) if args.dataset in DATASET_MODULES else (None, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = prepare_dataset(
                args.dataset,
                source,
                out_dir,
                image_size=args.image_size,
                workers=args.workers,
                strict=args.strict,
                seed=args.seed,
                num_images=args.num_images,
            )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
