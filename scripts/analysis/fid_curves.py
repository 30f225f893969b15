"""FID against training iterations and against sampling steps, one curve per weighting (the paper's Fig. 7 a/b).

Reads the results registry (one JSON object per line). Writes <out>.png and
<out>.csv (panel, curve, weight_schedule, pred, sampler, num_samples,
iterations, steps, fid, fid_std), the bootstrap standard deviations drawn as error bars.
"""

import argparse
import sys

from analyses.fid_curves import DEFAULT_RESULTS, run
from scripts.analysis import run_command
from guided_diffusion.run.command_line import ArgumentParser


def command(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="the results registry (JSON lines)")
    parser.add_argument("--dataset", default=None, help="required when the registry holds several datasets")
    parser.add_argument("--sampler", default=None, help="only results of this sampler")
    parser.add_argument("--num_samples", type=int, default=None, help="only FIDs over this many samples")
    parser.add_argument(
        "--at_steps", type=int, default=None,
        help="sampling steps of panel (a) (default: the most frequent step count)",
    )
    parser.add_argument(
        "--at_iterations", type=int, default=None,
        help="training iterations of panel (b) (default: each curve's latest)",
    )
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/fid_curves)")
    args = parser.parse_args(argv)
    paths = run(args.results, args.out, args.dataset, args.sampler, args.num_samples, args.at_steps, args.at_iterations)
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("fid_curves", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
