"""Train a diffusion model on a folder of images (ADM's image_train.py flags, plus the paper's).

    mpiexec -n 8 python scripts/image_train.py --config configs/ffhq.toml \
        --weight_schedule debias --data_dir data/ffhq256 --log_dir runs/ffhq/debias

Works the same under `torchrun --nproc_per_node 8` and as one plain process.
"""

import sys

from guided_diffusion import dist_util, job
from guided_diffusion.script_util import create_argparser, parse_args_with_config
from guided_diffusion.train_util import TrainingError, image_train_defaults, train

# The [sample] table of a dataset config belongs to scripts/image_sample.py.
TRAINING_CONFIG_SECTIONS = ("model", "diffusion", "train")


def parse_flags(argv):
    """The training flags of a command line (`--config` file first, then the flags given)."""
    defaults = image_train_defaults()
    parser = create_argparser(defaults, description=__doc__.splitlines()[0])
    args = parse_args_with_config(parser, defaults, argv, sections=TRAINING_CONFIG_SECTIONS)
    return {k: getattr(args, k) for k in defaults}


def main(argv=None):
    def run():
        flags = parse_flags(sys.argv[1:] if argv is None else argv)
        dist_util.setup_dist()
        train(flags)
        dist_util.cleanup()

    return job.run_main(run, "image_train.py", user_errors=(TrainingError,))


if __name__ == "__main__":
    sys.exit(main())
