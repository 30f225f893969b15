"""The GPU check's mini reproduction: the four weightings on the embedded faces, each trained for the same
number of iterations (as many as the step's budget allows), sampled from the same seed, saved as npz.

The first weighting trains for its share of the budget and fixes the iteration count for
the others; every run starts from the same initial weights and sees the same batches.
FID/KID are not computed here: `readme_text` says how to compute them on the CPU.
"""

import glob
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from datasets import prepare_dataset
from guided_diffusion import dist_util, logger, noise
from guided_diffusion.run import fast_paths
from guided_diffusion.image_ops import to_uint8_nhwc
from guided_diffusion.script_util import create_model_and_diffusion, load_config, model_and_diffusion_defaults
from guided_diffusion.train_util import TrainLoop
from scripts.benchmarks.gpu_check_base import REPO
from tests.tiny import TINY_8X8

WEIGHTINGS = ("constant", "p2", "min_snr", "debias")
CONFIG = os.path.join(REPO, "configs", "gpu_mini.toml")
# Sampling of all four runs is reserved this share of the step's budget (at least SAMPLE_RESERVE_MIN_S).
SAMPLE_RESERVE = 0.15
SAMPLE_RESERVE_MIN_S = 5.0
# The first run stops at this share of its quarter, so that the others' equal count fits despite jitter.
FIRST_RUN_SHARE = 0.9


def settings(tiny, device_type):
    """Model flags and training/sampling settings: configs/gpu_mini.toml, or a tiny 8x8 UNet for the CPU check."""
    defaults = model_and_diffusion_defaults()
    if tiny:
        flags = {**defaults, **TINY_8X8, "learn_sigma": False}
        return dict(flags=flags, batch=4, lr=2e-4, ema_rate="0.999", num_images=16, max_steps=2, num_samples=4,
                    sample_batch=4, ddim_steps=2, precision="fp32", optimizer_impl="default")
    flags = {**defaults, **load_config(CONFIG, defaults, sections=("model", "diffusion"))}
    return dict(flags=flags, batch=256, lr=2e-4, ema_rate="0.999", num_images=10000, max_steps=100000,
                num_samples=2000, sample_batch=500, ddim_steps=25,
                precision="bf16" if device_type == "cuda" else "fp32",
                optimizer_impl="fused" if device_type == "cuda" else "default")


def embedded_images(num_images, image_size, device, workers=None):
    """The embedded faces (seed 0) as a [-1, 1] NCHW tensor on `device`, drawn through datasets.prepare."""
    with tempfile.TemporaryDirectory() as folder:
        prepare_dataset("embedded", None, folder, image_size=image_size, workers=workers, seed=0,
                        num_images=num_images, progress=False)
        paths = sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)


def train(flags, weighting, data, setup, device, steps=None, until=None, seed=0):
    """Train one weighting for `steps` iterations, or until time `until` (time.monotonic); returns (loop, steps, s)."""
    torch.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**{**flags, "weight_schedule": weighting})
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as log_dir:
        logger.configure(log_dir, format_strs=[])
        try:
            loop = TrainLoop(
                model=model, diffusion=diffusion, data=None, batch_size=setup["batch"], lr=setup["lr"],
                ema_rate=setup["ema_rate"], ema_warmup=True, precision=setup["precision"], log_interval=10**9,
                save_interval=10**9, log_dir=log_dir, seed=seed,
                fast_path_options=fast_paths.FastPathOptions(optimizer_impl=setup["optimizer_impl"]),
            )
            start, done = time.monotonic(), 0
            while (steps is None or done < steps) and done < setup["max_steps"]:
                if until is not None and done and time.monotonic() >= until:
                    break
                rows = torch.randint(0, len(data), (setup["batch"],), generator=generator).to(device)
                loop.run_step(data[rows], {})
                done += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.monotonic() - start
        finally:
            logger.close()
    return loop, done, seconds


def sample(loop, flags, setup, device, noise_device, seed):
    """DDIM samples of the run's EMA weights as ADM's uint8 NHWC array; sample i depends on (seed, i) only."""
    model, diffusion = create_model_and_diffusion(
        **{**flags, "timestep_respacing": f"ddim{setup['ddim_steps']}"})
    (ema,) = loop.ema_params.values()
    state = loop.mp_trainer.master_params_to_state_dict(ema)
    model.load_state_dict(state)
    model.to(device).eval()
    forward = fast_paths.sampling_forward(model, setup["precision"], device, fast_paths.FastPathOptions())
    size = flags["image_size"]
    batches = []
    with torch.no_grad():
        for first in range(0, setup["num_samples"], setup["sample_batch"]):
            indices = list(range(first, min(first + setup["sample_batch"], setup["num_samples"])))
            batch = diffusion.ddim_sample_loop(
                forward, (len(indices), 3, size, size), clip_denoised=True, device=device, eta=0.0,
                noise_source=noise.noise_source(seed, indices, noise_device, device))
            batches.append(to_uint8_nhwc(batch))
    return np.concatenate(batches)


def run(deadline, out, tiny, noise_device="", seed=0, sample_reserve_min_s=SAMPLE_RESERVE_MIN_S):
    """The four runs under `deadline`; writes mini/<weighting>/samples_*.npz and FID_README.txt, returns the record.

    The record (per-run iterations, seconds and npz paths) goes into the check's steps.json, as it grows
    (`deadline.report`): a file of its own would be one more than what comes back from a GPU machine.
    """
    device = dist_util.dev()
    setup = settings(tiny, device.type)
    noise_device = noise.resolve_noise_device(noise_device, device.type)
    folder = os.path.join(out, "mini")
    os.makedirs(folder, exist_ok=True)
    record = dict(device=str(device), config="tests.tiny TINY_8X8" if tiny else os.path.relpath(CONFIG, REPO),
                  weightings=list(WEIGHTINGS), image_size=setup["flags"]["image_size"], seed=seed, noise_device=noise_device,
                  **{k: v for k, v in setup.items() if k != "flags"}, runs={})
    start = time.monotonic()
    data = embedded_images(setup["num_images"], setup["flags"]["image_size"], device)
    record["data_seconds"] = round(time.monotonic() - start, 2)
    reserve = max(sample_reserve_min_s, SAMPLE_RESERVE * deadline.remaining())
    quarter = (deadline.remaining() - reserve) / len(WEIGHTINGS)
    if quarter <= 0:
        raise RuntimeError(f"no time left to train after preparing the data ({deadline.remaining():.0f} s)")
    steps = None
    for weighting in WEIGHTINGS:
        if steps is not None and deadline.expired():
            record["runs"][weighting] = dict(status="skipped: budget exhausted")
            continue
        until = time.monotonic() + FIRST_RUN_SHARE * quarter if steps is None else None
        loop, done, seconds = train(setup["flags"], weighting, data, setup, device, steps=steps, until=until, seed=seed)
        steps = done if steps is None else steps
        sample_start = time.monotonic()
        images = sample(loop, setup["flags"], setup, device, noise_device, seed)
        name = f"samples_{'x'.join(map(str, images.shape))}.npz"
        os.makedirs(os.path.join(folder, weighting), exist_ok=True)
        np.savez(os.path.join(folder, weighting, name), arr_0=images)
        record["runs"][weighting] = dict(
            status="ok", iterations=done, train_seconds=round(seconds, 2), images_seen=done * setup["batch"],
            sample_seconds=round(time.monotonic() - sample_start, 2), npz=os.path.join("mini", weighting, name))
        record["iterations"] = steps
        deadline.report(record)
    with open(os.path.join(out, "FID_README.txt"), "w") as f:
        f.write(readme_text(record))
    return record


def readme_text(record):
    """The CPU commands that turn the returned npz files into FID and KID (evaluations.fid)."""
    size = record.get("image_size") or 32
    lines = [
        "Mini reproduction samples of scripts/benchmarks/gpu_check.py",
        f"device {record['device']}, {record.get('iterations')} iterations per weighting at batch {record['batch']}, "
        f"DDIM-{record['ddim_steps']}, seed {record['seed']}, noise drawn on: {record['noise_device']}.",
        "FID/KID are computed on the CPU by the project's evaluation, from the repository root",
        "(RESULTS=<this folder>, the folder these files came back in):",
        "",
        "  # the reference: the embedded faces the runs trained on (seed 0, 10K images)",
        f"  python -m datasets.prepare embedded data/embedded{size} --image_size {size} --num_images 10000",
    ]
    for weighting, run in record["runs"].items():
        if run.get("status") != "ok":
            continue
        lines.append(
            f"  python -m evaluations.fid --ref data/embedded{size} --samples $RESULTS/{run['npz']} --kid --device cpu "
            f"--dataset embedded --weight_schedule {weighting} --pred eps --iterations {run['iterations']} "
            f"--sampler ddim --steps {record['ddim_steps']} --results results/gpu_check.csv "
            f"--metrics_out $RESULTS/mini/{weighting}/metrics.json"
        )
    lines += ["", "The FID Inception weights are fetched on first use, or given with --inception_weights <file>.", ""]
    return "\n".join(lines)
