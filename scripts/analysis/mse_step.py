"""The MSE-step curve: per-timestep MSE between each checkpoint's noise estimate and the true noise (Fig. 4, 10).

"Initial" is the MSE between the network input x_t and the noise. All
checkpoints see the same images and noise; x0- and v-prediction models are
compared through the epsilon they imply. Writes <out>.png (linear and log y)
and <out>.csv (t, curve, mse, sem, num_images). Model flags are ADM's (or
--config FILE) and describe every checkpoint.
"""

import sys

from analyses.flags import add_checkpoint_arguments, checkpoint_specs
from analyses.models import model_settings
from analyses.mse_step import run
from guided_diffusion.script_util import create_argparser, model_and_diffusion_defaults, parse_args_with_config
from scripts.analysis import run_command


def command(argv):
    defaults = model_and_diffusion_defaults()
    parser = create_argparser(defaults, description=__doc__)
    add_checkpoint_arguments(parser)
    parser.add_argument("--data_dir", required=True, help="folder of real images, or an .npz with arr_0")
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--stride", type=int, default=1, help="evaluate every stride-th t (and always t = T-1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default=None, help="output prefix or directory (default: results/analysis/mse_step)")
    args = parse_args_with_config(parser, defaults, argv, sections=("model", "diffusion"))
    paths = run(
        model_settings(args), checkpoint_specs(args.checkpoints, args.checkpoint), args.data_dir, args.out,
        args.num_images, args.stride, args.seed, args.batch_size, args.device,
    )
    print(f"wrote {paths['png']} and {paths['csv']}")


def main(argv=None):
    return run_command("mse_step", command, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
