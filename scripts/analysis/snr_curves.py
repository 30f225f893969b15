"""SNR(t) and the amplification coefficient 1/sqrt(SNR(t)) of noise schedules (the paper's Fig. 2, left).

Writes <out>.png and <out>.csv (columns t, schedule, snr, amplification).
"""

import argparse
import sys

from analyses.schedules import run_snr_curves
from scripts.analysis import run_command
from guided_diffusion.run.command_line import ArgumentParser


def command(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", default="linear,cosine", help="comma-separated noise schedules")
    parser.add_argument("--diffusion_steps", type=int, default=1000)
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/snr_curves)")
    args = parser.parse_args(argv)
    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    paths = run_snr_curves(args.out, schedules, args.diffusion_steps)
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("snr_curves", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
