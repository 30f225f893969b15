"""Samples over the number of sampling steps T from the same noise, checkpoints side by side (Fig. 1).

Sample i of every checkpoint and every T starts from the same x_T and, for
ancestral sampling, sees the same per-step noise stream: `IndexedNoise(seed, [i])`
makes both a function of (seed, i) alone, whatever the batch size. Any sampler
of the registry (`guided_diffusion.samplers`) can draw the grid.
"""

import numpy as np
import torch as th
from tqdm.auto import tqdm

from guided_diffusion import samplers
from guided_diffusion.image_ops import to_uint8_nhwc
from guided_diffusion.dist_util import resolve_device
from guided_diffusion.noise import IndexedNoise
from .flags import require_positive
from .models import iter_models, make_diffusion
from .outputs import output_prefix, save_figure, save_npz, write_csv
from .plotting import grid_dpi, image_grid_figure

DEFAULT_STEPS = (2, 5, 10, 20, 50, 100, 1000)


def sampler_flags(sampler, steps, clip_denoised=True):
    """The flags that make `sampler` take `steps` steps with its default options."""
    return {**samplers.SAMPLER_OPTION_DEFAULTS, "sampler": sampler, "clip_denoised": clip_denoised,
            **samplers.steps_flags(sampler, steps)}


def sample_images(diffusion, model, num_samples, image_size, flags, seed=0, batch_size=16, device="cpu"):
    """uint8 (N, H, W, 3) samples 0..N-1 drawn by the sampler `flags` name, on the process it runs on."""
    run = samplers.get_sampler(flags["sampler"]).run
    batches = []
    with th.no_grad():
        for start in range(0, num_samples, batch_size):
            indices = range(start, min(start + batch_size, num_samples))
            shape = (len(indices), 3, image_size, image_size)
            batch = run(model, diffusion, shape, model_kwargs={}, noise_source=IndexedNoise(seed, indices),
                        device=device, flags=flags)
            batches.append(to_uint8_nhwc(batch))
    return np.concatenate(batches)


def few_step_samples(make_diffusion, models, steps, num_samples, image_size, seed=0, sampler="ddpm", batch_size=16,
                     device="cpu", progress=True):
    """{checkpoint: {T: uint8 samples}}; `make_diffusion(respacing)` gives the process for a --timestep_respacing."""
    settings = {}
    for T in steps:
        flags = sampler_flags(sampler, T)
        samplers.check_options(sampler, flags)
        settings[T] = (flags, make_diffusion(samplers.process_respacing(sampler, flags)))
    samples = {}
    for name, model in models:
        samples[name] = {}
        for T in tqdm(steps, desc=f"{name} ({sampler})", disable=not progress, leave=False):
            flags, diffusion = settings[T]
            samples[name][T] = sample_images(diffusion, model, num_samples, image_size, flags, seed, batch_size, device)
    return samples


def write_few_step(samples, prefix, sampler="ddpm"):
    """The grid (rows checkpoint x sample, columns T), per-sample channel means, and one npz per checkpoint and T."""
    paths = {}
    rows, cells, labels = [], [], []
    for name, by_steps in samples.items():
        steps = list(by_steps)
        for T, images in by_steps.items():
            paths[f"npz_{name}_T{T}"] = save_npz(f"{prefix}_{name}_T{T}.npz", arr_0=images)
            means = images.reshape(images.shape[0], -1, 3).mean(axis=1)
            rows.extend((name, T, i, *(float(m) for m in means[i])) for i in range(images.shape[0]))
        for i in range(next(iter(by_steps.values())).shape[0]):
            cells.append([by_steps[T][i] for T in steps])
            labels.append(f"{name} #{i}")
    header = ("checkpoint", "steps", "sample", "mean_r", "mean_g", "mean_b")
    paths["csv"] = write_csv(prefix + ".csv", header, rows)
    columns = [f"T={T}" for T in next(iter(samples.values()))]
    figure = image_grid_figure(cells, labels, columns, title=f"{sampler.upper()} samples from the same noise")
    paths["png"] = save_figure(figure, prefix + ".png", dpi=grid_dpi(cells[0][0].shape[0]))
    return paths


def run(settings, checkpoints, out=None, steps=DEFAULT_STEPS, num_samples=4, seed=0, sampler="ddpm", batch_size=16,
        device=None, progress=True):
    """Sample `num_samples` images per checkpoint and T, write the grid, the CSV and the samples."""
    require_positive(num_samples, "--num_samples")
    require_positive(batch_size, "--batch_size")
    for T in steps:
        if T < 2:
            raise ValueError(f"--steps: {T} is too few; a respaced process needs at least 2 steps")
    device = resolve_device(device)
    models = iter_models(checkpoints, settings, device)
    samples = few_step_samples(
        lambda respacing: make_diffusion(settings, timestep_respacing=respacing), models, steps, num_samples,
        settings["image_size"], seed, sampler, batch_size, device, progress,
    )
    return write_few_step(samples, output_prefix(out, "few_step_grid"), sampler)
