"""Train a diffusion model on a folder of images (ADM's image_train.py flags, plus the paper's).

    mpiexec -n 8 python scripts/image_train.py --config configs/ffhq.toml \
        --weight_schedule debias --data_dir data/ffhq256 --log_dir runs/ffhq/debias

Works the same under `torchrun --nproc_per_node 8`, `srun` and as one plain process. On SIGTERM or
SIGUSR1 every rank stops at the same step, writes a checkpoint and exits with 75 (requeue me).
"""

import sys

from guided_diffusion import dist_util
from guided_diffusion.run import flag_help, job, preemption
from guided_diffusion.script_util import create_argparser, parse_flags_and_given
from guided_diffusion.train_util import TrainingError, check_training_flags, image_train_defaults, train

# The [sample] table of a dataset config belongs to scripts/image_sample.py.
TRAINING_CONFIG_SECTIONS = ("model", "diffusion", "train")


def parse_command_line(argv):
    """(flags, the names of the flags given): `--config` file first, then the flags on the command line."""
    defaults = image_train_defaults()
    parser = create_argparser(defaults, description=__doc__.splitlines()[0], help_texts=flag_help.training_help())
    return parse_flags_and_given(parser, defaults, argv, sections=TRAINING_CONFIG_SECTIONS)


def parse_flags(argv):
    """The training flags of a command line."""
    return parse_command_line(argv)[0]


def check_command_line(argv):
    """Raise ValueError for a value training would refuse; runs nothing (the plan check asks it)."""
    check_training_flags(*parse_command_line(argv))


def main(argv=None):
    def run():
        flags, given = parse_command_line(sys.argv[1:] if argv is None else argv)
        dist_util.setup_dist(device=flags["device"], timeout_minutes=flags["dist_timeout"])
        loop = train(flags, given)
        is_main = dist_util.is_main()
        dist_util.cleanup()
        unhealthy = loop.divergence.ending_line(loop.log_dir)
        if unhealthy and not loop.stopped_by_signal:
            if is_main:
                print(f"image_train.py: error: {unhealthy}", file=sys.stderr, flush=True)
            return 1
        if not loop.stopped_by_signal:
            return 0
        if is_main:
            print(
                f"image_train.py: stopped by a signal at step {loop.step}, checkpoint written; exit "
                f"{preemption.REQUEUE_EXIT_CODE} asks the job to requeue (it resumes with --resume_checkpoint auto)",
                file=sys.stderr,
                flush=True,
            )
        return preemption.REQUEUE_EXIT_CODE

    return job.run_main(run, "image_train.py", user_errors=(TrainingError,))


if __name__ == "__main__":
    sys.exit(main())
