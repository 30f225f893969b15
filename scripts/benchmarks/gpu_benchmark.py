"""Training and sampling speed on one GPU: images/s, MFU and peak memory for the FFHQ config at 256x256.

    python -m scripts.benchmarks.gpu_benchmark                      # configs/ffhq.toml, batch 8, fp32/fp16/bf16, compile off/on
    python -m scripts.benchmarks.gpu_benchmark --precisions bf16 --compile on --channels_last True --noise_threads 8
    python -m scripts.benchmarks.gpu_benchmark --tiny --precisions fp32 --compile off   # the test UNet: seconds on a CPU

Training: our `TrainLoop.run_step` (forward, backward, AdamW, EMA, loss logging) at --batch_size on
a one-rank process group (DDP, as a real run), for every precision in --precisions and every
--compile setting. FLOPs per step are counted once with torch.utils.flop_counter on the eager
model; MFU is the achieved FLOP/s over the GPU's dense tensor-core peak (measure.PEAK_TFLOPS,
or --peak_tflops). Sampling: DDPM-1000 and DDIM-50 through the diffusion's sampling loops with
our noise source and model wrapper at --sample_batch (auto: the largest batch that fits), timing
--sample_steps steps after --warmup steps and scaling to the full step count, since every step
costs the same. Weights are random: speed does not depend on them. Peak memory is the most
allocated by tensors during each measurement.
"""

import argparse
import json
import os
import sys
import tempfile

import torch

from guided_diffusion import dist_util, logger, sampling
from guided_diffusion.run import fast_paths
from guided_diffusion.run.fast_paths import FastPathOptions
from guided_diffusion.script_util import (
    create_gaussian_diffusion,
    create_model_and_diffusion,
    diffusion_kwargs,
    load_config,
    load_model_for_sampling,
    model_and_diffusion_defaults,
    str2bool,
)
from guided_diffusion.train_util import TrainLoop
from scripts.benchmarks import measure
from tests.tiny import TINY_MODEL_FLAGS
from guided_diffusion.run.command_line import ArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DDIM_STEPS = 50
COMPILE_SETTINGS = {"off": (False,), "on": (True,), "both": (False, True)}


def build_parser():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "ffhq.toml"), help="model/diffusion flags (TOML)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test UNet (16x16) instead of --config: a CPU check")
    parser.add_argument("--batch_size", type=int, default=8, help="training images per step (the paper's batch on one GPU)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="comma list of fp32, fp16, bf16")
    parser.add_argument("--compile", choices=sorted(COMPILE_SETTINGS), default="both", help="torch.compile off, on or both")
    parser.add_argument("--compile_mode", default="default", help=fast_paths.FLAG_HELP["compile_mode"])
    parser.add_argument("--channels_last", type=str2bool, default=False, help=fast_paths.FLAG_HELP["channels_last"])
    parser.add_argument("--optimizer_impl", default="default", help=fast_paths.FLAG_HELP["optimizer_impl"])
    parser.add_argument("--cuda_graphs", type=str2bool, default=False, help=fast_paths.FLAG_HELP["cuda_graphs"])
    parser.add_argument("--noise_threads", type=int, default=0, help=fast_paths.FLAG_HELP["noise_threads"])
    parser.add_argument("--noise_device", default="", help="sampling noise: cpu or device (default: device on CUDA)")
    parser.add_argument("--parts", default="train,sample", help="what to measure: train, sample or both")
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--sample_steps", type=int, default=10, help="timed sampling steps per sampler")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement (compilation)")
    parser.add_argument("--sample_batch", default="auto", help="sampling batch, or auto (the largest that fits)")
    parser.add_argument("--max_sample_batch", type=int, default=512, help="upper end of the auto search")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak for MFU (default: known GPUs)")
    parser.add_argument("--json", default="", help="also write the rows here")
    return parser


def model_flags(args):
    """Every model and diffusion flag of the benchmarked network."""
    defaults = model_and_diffusion_defaults()
    if args.tiny:
        return {**defaults, **TINY_MODEL_FLAGS}
    return {**defaults, **load_config(args.config, defaults, sections=("model", "diffusion"))}


def fast_path_options(args, compiled):
    return FastPathOptions(
        channels_last=args.channels_last, compile=compiled, compile_mode=args.compile_mode if compiled else "default",
        optimizer_impl=args.optimizer_impl, cuda_graphs=args.cuda_graphs, noise_threads=args.noise_threads,
    )


def row_label(precision, compiled, args):
    parts = [precision] + (["compile" if args.compile_mode == "default" else f"compile:{args.compile_mode}"] if compiled else [])
    return " + ".join(parts)


def random_batch(flags, batch, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 3, flags["image_size"], flags["image_size"])
    return (torch.rand(shape, generator=generator) * 2 - 1).to(device)


def training_flops(flags, batch, device):
    """FLOPs of one training step's forward and backward (the optimizer's are negligible)."""
    model, diffusion = create_model_and_diffusion(**flags)
    model.to(device)
    x = random_batch(flags, batch, device)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
    return measure.count_flops(lambda: diffusion.training_losses(model, x, t)["loss"].mean().backward())


def forward_flops_per_image(flags, device):
    model, _ = create_model_and_diffusion(**flags)
    model.to(device).eval()
    x = random_batch(flags, 1, device)
    with torch.no_grad():
        return measure.count_flops(lambda: model(x, torch.zeros(1, dtype=torch.long, device=device)))


def measure_training(flags, precision, compiled, args, device, flops_per_step):
    model, diffusion = create_model_and_diffusion(**{**flags, "use_fp16": precision == "fp16"})
    model.to(device)
    with tempfile.TemporaryDirectory() as log_dir:
        logger.configure(log_dir)
        try:
            loop = TrainLoop(
                model=model, diffusion=diffusion, data=None, batch_size=args.batch_size, lr=1e-4, precision=precision,
                log_interval=10**9, save_interval=10**9, log_dir=log_dir, seed=0,
                fast_path_options=fast_path_options(args, compiled),
            )
            batch, cond = random_batch(flags, args.batch_size, device), {}
            measure.reset_peak_memory(device)
            seconds = measure.seconds_per_call(lambda: loop.run_step(batch, cond), args.train_steps, args.warmup, device)
            memory = measure.peak_memory_gib(device)
        finally:
            logger.close()
    peak = measure.peak_tflops(device, precision, args.peak_tflops)
    return measure.training_row(row_label(precision, compiled, args), args.batch_size, seconds, flops_per_step, peak, memory)


def sampling_settings(flags):
    """(label, sampler, --timestep_respacing, steps): DDPM over every step of the process (1000 for the
    paper's configs) and DDIM-50."""
    steps = flags["diffusion_steps"]
    return (f"DDPM-{steps}", "ddpm", "", steps), (f"DDIM-{DDIM_STEPS}", "ddim", f"ddim{DDIM_STEPS}", DDIM_STEPS)


def sampling_loop(diffusion, sampler, model_fn, shape, noise_source, device):
    if sampler == "ddpm":
        return diffusion.p_sample_loop_progressive(model_fn, shape, noise_source=noise_source, device=device)
    return diffusion.ddim_sample_loop_progressive(model_fn, shape, noise_source=noise_source, device=device, eta=0.0)


def measure_sampling(flags, precision, compiled, args, device, model_path, flops_per_image):
    """One row per sampling setting, at the batch that --sample_batch gives for this precision."""
    options = fast_path_options(args, compiled)
    run_flags = sampling.validate_flags(
        {**flags, "model_path": model_path, "out_dir": "unused", "precision": precision, "batch_size": args.sample_batch,
         "noise_device": getattr(args, "noise_device", ""),
         **{k: getattr(options, k) for k in fast_paths.sampling_flag_defaults()}},
        device.type,
    )
    model, _ = load_model_for_sampling(flags, model_path, device, precision)
    batch = run_flags["batch_size"]
    if batch == fast_paths.AUTO_BATCH_SIZE:
        batch = fast_paths.auto_batch_size(model, run_flags, device, args.max_sample_batch)
    model_fn = fast_paths.sampling_forward(model, precision, device, options)
    noise_for = fast_paths.noise_source_factory(options, device, run_flags["noise_device"])
    shape = (batch, 3, flags["image_size"], flags["image_size"])
    rows = []
    for label, sampler, respacing, steps in sampling_settings(flags):
        diffusion = create_gaussian_diffusion(**diffusion_kwargs({**flags, "timestep_respacing": respacing}))
        timed = max(1, min(args.sample_steps, steps - args.warmup))
        measure.reset_peak_memory(device)
        loop = sampling_loop(diffusion, sampler, model_fn, shape, noise_for(0, range(batch)), device)
        seconds = measure.seconds_per_item(loop, timed, min(args.warmup, steps - timed), device)
        loop.close()
        rows.append(measure.sampling_row(f"{label} {row_label(precision, compiled, args)}", batch, seconds, steps,
                                         flops_per_image * batch, measure.peak_memory_gib(device)))
    return rows


def run(args):
    """Every measurement the arguments ask for, as rows (see measure.training_row / sampling_row)."""
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    parts = {p.strip() for p in args.parts.split(",")}
    flags = model_flags(args)
    device = dist_util.dev()
    rows = []
    if "train" in parts:
        flops = training_flops(flags, args.batch_size, device)
        for precision in precisions:
            for compiled in COMPILE_SETTINGS[args.compile]:
                rows.append(measure_training(flags, precision, compiled, args, device, flops))
                print(measure.format_rows(rows[-1:]).splitlines()[-1], flush=True)
    if "sample" in parts:
        flops_per_image = forward_flops_per_image(flags, device)
        with tempfile.TemporaryDirectory() as work:
            model_path = os.path.join(work, "model.pt")
            torch.save(create_model_and_diffusion(**flags)[0].state_dict(), model_path)
            for precision in precisions:
                for compiled in COMPILE_SETTINGS[args.compile]:
                    rows.extend(measure_sampling(flags, precision, compiled, args, device, model_path, flops_per_image))
                    print("\n".join(measure.format_rows(rows[-2:]).splitlines()[1:]), flush=True)
    return rows


def describe(args, flags, device):
    parameters = sum(p.numel() for p in create_model_and_diffusion(**flags)[0].parameters())
    source = "tiny test UNet" if args.tiny else os.path.relpath(args.config, REPO)
    return (
        f"{source}: {flags['image_size']}x{flags['image_size']}, {parameters / 1e6:.1f}M parameters; {measure.device_name(device)}; "
        f"torch {torch.__version__}; channels_last={args.channels_last} optimizer_impl={args.optimizer_impl} "
        f"cuda_graphs={args.cuda_graphs} noise_threads={args.noise_threads}"
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    dist_util.setup_dist()
    try:
        print(describe(args, model_flags(args), dist_util.dev()), flush=True)
        rows = run(args)
    except ValueError as err:
        print(f"gpu_benchmark.py: error: {err}", file=sys.stderr)
        return 1
    finally:
        dist_util.cleanup()
    print(measure.format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(setting=vars(args), rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
