"""Samples from the same noise with different numbers of sampling steps T, checkpoints side by side (Fig. 1).

Rows are checkpoint x sample, columns are T. Sample i's noise depends only on
(--seed, i), so every checkpoint and T starts from the same x_T. Writes
<out>.png, <out>.csv (per-sample channel means in [0, 255]) and
<out>_<checkpoint>_T<T>.npz (arr_0, ready for color_shift). Model flags are
ADM's (or --config FILE) and describe every checkpoint.
"""

import sys

from analyses.few_step import DEFAULT_STEPS, run
from analyses.flags import add_checkpoint_arguments, checkpoint_specs, parse_int_list
from analyses.models import model_settings
from guided_diffusion import samplers
from guided_diffusion.script_util import create_argparser, model_and_diffusion_defaults, parse_args_with_config
from scripts.analysis import run_command


def command(argv):
    defaults = model_and_diffusion_defaults()
    parser = create_argparser(defaults, description=__doc__)
    add_checkpoint_arguments(parser)
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="comma-separated sampling steps T")
    parser.add_argument("--sampler", default="ddpm", choices=samplers.sampler_names(), help="a registered sampler")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/few_step_grid)")
    args = parse_args_with_config(parser, defaults, argv, sections=("model", "diffusion"))
    paths = run(
        model_settings(args), checkpoint_specs(args.checkpoints, args.checkpoint), args.out,
        parse_int_list(args.steps, "--steps"), args.num_samples, args.seed, args.sampler, args.batch_size, args.device,
    )
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("few_step_grid", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
