"""Every registered loss-weight schedule over t, normalised for comparison (the paper's Fig. 5, left).

Iterates guided_diffusion.weighting.WEIGHT_SCHEDULES, so a newly registered
weighting appears without changes here. Writes <out>.png and <out>.csv
(columns t, schedule, snr, weight, normalized_weight).
"""

import argparse
import sys

from guided_diffusion.analysis.schedules import NORMALIZATIONS, run_weight_curves
from guided_diffusion.script_util import diffusion_defaults


def main(argv=None):
    defaults = diffusion_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise_schedule", default=defaults["noise_schedule"])
    parser.add_argument("--diffusion_steps", type=int, default=defaults["diffusion_steps"])
    parser.add_argument("--p2_k", type=float, default=defaults["p2_k"])
    parser.add_argument("--p2_gamma", type=float, default=defaults["p2_gamma"])
    parser.add_argument("--min_snr_gamma", type=float, default=defaults["min_snr_gamma"])
    parser.add_argument(
        "--normalize", default="mean", choices=sorted(NORMALIZATIONS),
        help="divide each curve by its mean over t (default), by its maximum, or not at all",
    )
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/weight_curves)")
    args = parser.parse_args(argv)
    paths = run_weight_curves(
        args.out, args.noise_schedule, args.diffusion_steps, args.normalize,
        p2_k=args.p2_k, p2_gamma=args.p2_gamma, min_snr_gamma=args.min_snr_gamma,
    )
    print(f"wrote {paths['png']} and {paths['csv']}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:
        sys.exit(f"weight_curves: error: {err}")
