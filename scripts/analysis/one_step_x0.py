"""One-step x0 estimates from the same noisy inputs for several checkpoints (the paper's Fig. 2 right, Fig. 3).

Each real image is noised to x_t with one fixed noise draw per image and fed to
the network once; x0_hat is p_mean_variance's pred_xstart. Writes
<out>_<checkpoint>.png per checkpoint, <out>.png with all checkpoints under
the shared x_t, and <out>.csv (checkpoint, image, t, x0_mse, mean_shift_l2).
Model flags are ADM's (or --config FILE) and describe every checkpoint.
"""

import sys

from analyses.flags import add_checkpoint_arguments, checkpoint_specs, parse_int_list
from analyses.models import model_settings
from analyses.one_step import DEFAULT_TIMESTEPS, run
from guided_diffusion.script_util import (
    create_argparser,
    model_and_diffusion_defaults,
    parse_args_with_config,
    str2bool,
)
from scripts.analysis import run_command


def command(argv):
    defaults = model_and_diffusion_defaults()
    parser = create_argparser(defaults, description=__doc__)
    add_checkpoint_arguments(parser)
    parser.add_argument("--data_dir", required=True, help="folder of real images, or an .npz with arr_0")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--timesteps", default=",".join(map(str, DEFAULT_TIMESTEPS)))
    parser.add_argument("--clip_denoised", type=str2bool, default=True, help="clip x0_hat to [-1, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/one_step_x0)")
    args = parse_args_with_config(parser, defaults, argv, sections=("model", "diffusion"))
    paths = run(
        model_settings(args), checkpoint_specs(args.checkpoints, args.checkpoint), args.data_dir, args.out,
        args.num_images, parse_int_list(args.timesteps, "--timesteps"), args.seed, args.clip_denoised,
        args.batch_size, args.device,
    )
    print("wrote " + ", ".join(paths.values()))


def main(argv=None):
    return run_command("one_step_x0", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
