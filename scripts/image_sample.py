"""Sample from a model into ADM's samples_NxHxWx3.npz, reproducibly, over any number of ranks, resumably.

    mpiexec -n 8 python scripts/image_sample.py --config configs/ffhq.toml \
        --model_path runs/ffhq/debias/ema_0.9999_500000.pt --timestep_respacing 100 \
        --num_samples 50000 --out_dir samples/ffhq/debias/T100

Works the same under `torchrun --nproc_per_node 8` and as one plain process.
See docs/sampling.md (README "Sampling") for the flags and the layout of --out_dir.
"""

import sys

from guided_diffusion import dist_util, job, sampling
from guided_diffusion.script_util import create_argparser, parse_args_with_config


def parse_flags(argv):
    """The sampling flags of a command line (`--config` file first, then the flags given)."""
    defaults = sampling.flag_defaults()
    parser = create_argparser(defaults, description=__doc__.splitlines()[0])
    args = parse_args_with_config(parser, defaults, argv, sections=sampling.CONFIG_SECTIONS)
    return {k: getattr(args, k) for k in defaults}


def main(argv=None):
    def run():
        flags = parse_flags(sys.argv[1:] if argv is None else argv)
        dist_util.setup_dist()
        result = sampling.sample_to_dir(flags)
        dist_util.cleanup()
        if result["npz"]:
            rate = result["images_sampled"] / result["seconds"] if result["seconds"] > 0 else 0.0
            print(f"wrote {result['npz']} ({result['images_sampled']} images sampled now, {rate:.2f} images/s)")

    return job.run_main(run, "image_sample.py", user_errors=sampling.USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
