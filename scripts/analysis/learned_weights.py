"""What EDM2's learned weighting learned against the fixed weightings: effective epsilon weights over log SNR.

Reads each checkpoint's manifest (the run's flags) and, for `--weight_schedule edm2`, the learned weighting
saved beside it. Writes <out>.png and <out>.csv (columns t, run, snr, u, weight, normalized_weight).
"""

import argparse
import sys

from analyses.flags import checkpoint_specs
from analyses.learned_weights import run
from scripts.analysis import run_command
from guided_diffusion.run.command_line import ArgumentParser


def command(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", required=True, help="comma-separated run=path pairs of checkpoints with manifests")
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/learned_weights)")
    args = parser.parse_args(argv)
    paths = run(checkpoint_specs(args.checkpoints), args.out)
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("learned_weights", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
