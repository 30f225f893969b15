"""Throughput of Inception feature extraction (images/s) at given input sizes.

    python -m evaluations.benchmark_features [--sizes 32,256] [--num_images 64] [--batch_size 32] [--device cpu]

Every input is resized to 299x299 inside the network, so the cost per image
is nearly independent of the input size; the numbers show how much the
resize and the copy add. Synthetic uint8 images, one warm-up batch first.
"""

import argparse
import sys
import time

import numpy as np
import torch

from .errors import EvaluationError
from .inception import InceptionFeatures
from guided_diffusion.run.command_line import ArgumentParser


def images_per_second(inception, size, num_images, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num_images, size, size, 3), dtype=np.uint8)
    inception(images[: min(batch_size, num_images)])
    if inception.device.type == "cuda":
        torch.cuda.synchronize(inception.device)
    start = time.perf_counter()
    for begin in range(0, num_images, batch_size):
        inception(images[begin : begin + batch_size])
    if inception.device.type == "cuda":
        torch.cuda.synchronize(inception.device)
    return num_images / (time.perf_counter() - start)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32,256", help="comma-separated square input sizes")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    parser.add_argument("--inception_weights", default=None)
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if not sizes or min(sizes) < 1 or args.num_images < 1 or args.batch_size < 1:
            raise EvaluationError("--sizes, --num_images and --batch_size must be positive")
        inception = InceptionFeatures(args.inception_weights, device=args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads() if inception.device.type == "cpu" else None
    where = f"{inception.device}" + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
    for size in sizes:
        rate = images_per_second(inception, size, args.num_images, args.batch_size)
        print(f"{size}x{size} -> 299x299 on {where}: {rate:.2f} images/s ({args.num_images} images, batch {args.batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
