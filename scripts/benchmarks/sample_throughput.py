"""Sampling throughput (images/s) of a small UNet on this machine, for the paper's DDPM-100 and DDIM-50.

    OMP_NUM_THREADS=2 python scripts/benchmarks/sample_throughput.py --config configs/demo.toml --num_samples 64

The model has the config's architecture and freshly initialised weights (speed
does not depend on them); it goes through the full image_sample.py path
(checkpoint load, per-index noise, batch files, merge) in a temporary
--out_dir. The rate is the sampling loop's, over the images sampled, without
model loading or the merge.
"""

import argparse
import json
import os
import tempfile

import torch

from guided_diffusion import sampling
from guided_diffusion.script_util import create_model_and_diffusion, load_config, model_and_diffusion_defaults

SETTINGS = [  # (label, sampler, timestep_respacing)
    ("DDPM-100", "ddpm", "100"),
    ("DDIM-50", "ddim", "ddim50"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.toml", help="model/diffusion flags (TOML)")
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()

    defaults = model_and_diffusion_defaults()
    model_flags = {**defaults, **load_config(args.config, defaults, sections=("model", "diffusion"))}
    results = []
    with tempfile.TemporaryDirectory() as work:
        model_path = os.path.join(work, "model.pt")
        model, _ = create_model_and_diffusion(**model_flags)
        torch.save(model.state_dict(), model_path)
        for label, sampler, respacing in SETTINGS:
            flags = dict(
                model_flags,
                model_path=model_path,
                out_dir=os.path.join(work, label),
                num_samples=args.num_samples,
                batch_size=args.batch_size,
                sampler=sampler,
                timestep_respacing=respacing,
            )
            result = sampling.sample_to_dir(flags, progress=False)
            rate = result["images_sampled"] / result["seconds"]
            results.append(dict(setting=label, images=result["images_sampled"], seconds=round(result["seconds"], 2),
                                images_per_second=round(rate, 3)))
            print(f"{label:9s} {result['images_sampled']} images in {result['seconds']:.1f} s: {rate:.2f} images/s")
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"config {args.config}, {model_flags['image_size']}x{model_flags['image_size']}, "
          f"batch {args.batch_size}, {device}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=args.config, device=device, batch_size=args.batch_size, results=results), f, indent=2)


if __name__ == "__main__":
    main()
