"""Sampling throughput (images/s) of a small UNet on this machine, for the paper's DDPM-100 and DDIM-50.

    OMP_NUM_THREADS=2 python -m scripts.benchmarks.sample_throughput --config configs/demo.toml --num_samples 64

The model has the config's architecture and freshly initialised weights (speed
does not depend on them); it goes through the full image_sample.py path
(checkpoint load, per-index noise, batch files, merge) in a temporary
--out_dir. The rate is the sampling loop's, over the images sampled, without
model loading or the merge; with --repeats the fastest run counts (on a shared
machine the slower ones measure the neighbours).
"""

import argparse
import json
import os
import tempfile

import torch

from guided_diffusion import sampling
from guided_diffusion.script_util import create_model_and_diffusion, load_config, model_and_diffusion_defaults
from guided_diffusion.run.command_line import ArgumentParser

SETTINGS = [  # (label, sampler, timestep_respacing)
    ("DDPM-100", "ddpm", "100"),
    ("DDIM-50", "ddim", "ddim50"),
]


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.toml", help="model/diffusion flags (TOML)")
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the fastest is reported")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)

    defaults = model_and_diffusion_defaults()
    model_flags = {**defaults, **load_config(args.config, defaults, sections=("model", "diffusion"))}
    results = []
    with tempfile.TemporaryDirectory() as work:
        model_path = os.path.join(work, "model.pt")
        model, _ = create_model_and_diffusion(**model_flags)
        torch.save(model.state_dict(), model_path)
        for label, sampler, respacing in SETTINGS:
            times = []
            for repeat in range(args.repeats):
                flags = dict(
                    model_flags,
                    model_path=model_path,
                    out_dir=os.path.join(work, f"{label}-{repeat}"),
                    num_samples=args.num_samples,
                    batch_size=args.batch_size,
                    sampler=sampler,
                    timestep_respacing=respacing,
                )
                times.append(sampling.sample_to_dir(flags, progress=False)["seconds"])
            best = min(times)
            rate = args.num_samples / best
            results.append(dict(setting=label, images=args.num_samples, seconds=[round(t, 2) for t in times],
                                images_per_second=round(rate, 3)))
            print(f"{label:9s} {args.num_samples} images in {', '.join(f'{t:.1f}' for t in times)} s: "
                  f"{rate:.2f} images/s (best of {args.repeats})")
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"config {args.config}, {model_flags['image_size']}x{model_flags['image_size']}, "
          f"batch {args.batch_size}, {device}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=args.config, device=device, batch_size=args.batch_size, results=results), f, indent=2)


if __name__ == "__main__":
    main()
