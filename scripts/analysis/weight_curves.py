"""Every registered loss-weight schedule over t, normalised for comparison (the paper's Fig. 5, left).

Iterates guided_diffusion.weighting.WEIGHT_SCHEDULES, so a newly registered
weighting appears without changes here. Writes <out>.png and <out>.csv
(columns t, schedule, snr, weight, normalized_weight).
"""

import argparse
import sys

from analyses.schedules import NORMALIZATIONS, run_weight_curves
from guided_diffusion import weighting
from guided_diffusion.script_util import diffusion_defaults
from scripts.analysis import run_command
from guided_diffusion.run.command_line import ArgumentParser


def command(argv):
    defaults = diffusion_defaults()
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise_schedule", default=defaults["noise_schedule"])
    parser.add_argument("--diffusion_steps", type=int, default=defaults["diffusion_steps"])
    for name, owners in weighting.parameter_owners().items():
        parser.add_argument(f"--{name}", type=float, default=defaults[name], help=f"parameter of {', '.join(owners)}")
    parser.add_argument(
        "--normalize", default="mean", choices=sorted(NORMALIZATIONS),
        help="divide each curve by its mean over t (default), by its maximum, or not at all",
    )
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/weight_curves)")
    args = parser.parse_args(argv)
    paths = run_weight_curves(
        args.out, args.noise_schedule, args.diffusion_steps, args.normalize,
        **{name: getattr(args, name) for name in weighting.parameter_defaults()},
    )
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("weight_curves", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
