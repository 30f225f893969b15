"""Colour shift as numbers: per-channel mean and std of sample sets against the training set.

For each sample set (an .npz with arr_0, a folder of sample batches, or an
image folder): per-channel mean difference and std ratio to the reference,
the L2 distance of the mean colours, and the Frechet distance of per-image
mean colours, all in [0, 255] units. Writes <out>.csv and a bar plot <out>.png.
"""

import argparse
import sys

from analyses.color_shift import run
from scripts.analysis import run_command
from guided_diffusion.run.command_line import ArgumentParser


def command(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--samples", required=True,
        help="comma-separated name[:T]=path entries, e.g. constant:2=samples_constant_T2.npz",
    )
    parser.add_argument("--reference", required=True, help="the training set: image folder or .npz with arr_0")
    parser.add_argument(
        "--image_size", type=int, default=None,
        help="centre-crop the reference to this size (default: the size of the first sample set)",
    )
    parser.add_argument("--reference_limit", type=int, default=None, help="use only the first N reference images")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/color_shift)")
    args = parser.parse_args(argv)
    paths = run(args.samples, args.reference, args.out, args.image_size, args.batch_size, args.reference_limit)
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("color_shift", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
