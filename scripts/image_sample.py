"""Sample from a model into ADM's samples_NxHxWx3.npz, reproducibly, over any number of ranks, resumably.

    mpiexec -n 8 python scripts/image_sample.py --config configs/ffhq.toml \
        --model_path runs/ffhq/debias/ema_0.9999_500000.pt --timestep_respacing 100 \
        --num_samples 50000 --out_dir samples/ffhq/debias/T100

Works the same under `torchrun --nproc_per_node 8`, `srun` and as one plain process, and as
`--shard i --num_shards n` array tasks into one --out_dir. SIGTERM or SIGUSR1 ends it with exit
75 (requeue me) and only complete batch files on disk; a re-run samples what is missing.
A checkpoint trained here needs no model flags: those saved beside it are the defaults.
See the README's "Sampling" section for the flags and the layout of --out_dir.
"""

import sys

from guided_diffusion import dist_util, sampling
from guided_diffusion.run import checkpoint_flags, flag_help, job, preemption
from guided_diffusion.script_util import create_argparser, parse_flags_and_given


def parse_command_line(argv):
    """(flags, the names of the flags given): `--config` file first, then the flags on the command line."""
    defaults = sampling.flag_defaults()
    parser = create_argparser(defaults, description=__doc__.splitlines()[0], help_texts=flag_help.sampling_help())
    return parse_flags_and_given(parser, defaults, argv, sections=sampling.CONFIG_SECTIONS)


def parse_flags(argv):
    """The sampling flags of a command line, before the checkpoint's manifest completes them."""
    return parse_command_line(argv)[0]


def check_command_line(argv):
    """Raise ValueError for a value sampling would refuse; runs nothing (the plan check asks it)."""
    sampling.prepare_run(checkpoint_flags.sampling_flags(*parse_command_line(argv)))


def main(argv=None):
    def run():
        flags = checkpoint_flags.sampling_flags(*parse_command_line(sys.argv[1:] if argv is None else argv))
        dist_util.setup_dist(device=flags["device"], timeout_minutes=flags["dist_timeout"])
        try:
            with preemption.raise_on_stop_signals():
                result = sampling.sample_to_dir(flags)
        except preemption.StopRequested as stop:
            print(
                f"image_sample.py: stopped by {stop.signal_name}; every batch file on disk is complete, a re-run "
                f"samples the rest (exit {preemption.REQUEUE_EXIT_CODE}: requeue me)",
                file=sys.stderr,
                flush=True,
            )
            if dist_util.get_world_size() > 1:
                dist_util.abort(preemption.REQUEUE_EXIT_CODE)
            dist_util.cleanup()
            return preemption.REQUEUE_EXIT_CODE
        dist_util.cleanup()
        if result["npz"]:
            rate = result["images_sampled"] / result["seconds"] if result["seconds"] > 0 else 0.0
            print(f"wrote {result['npz']} ({result['images_sampled']} images sampled now, {rate:.2f} images/s)")
        elif result["images_missing"]:
            print(
                f"shard {flags['shard']} of {flags['num_shards']} done ({result['images_sampled']} images sampled "
                f"now); {result['images_missing']} images still to come from other shards, the last to finish merges"
            )
        return 0

    return job.run_main(run, "image_sample.py", user_errors=sampling.USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
