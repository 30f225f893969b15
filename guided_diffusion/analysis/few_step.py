"""Samples over the number of sampling steps T from the same noise, checkpoints side by side (Fig. 1).

Sample i of every checkpoint and every T starts from the same x_T and, for
ancestral sampling, sees the same per-step noise stream: `IndexedNoise(seed, [i])`
makes both a function of (seed, i) alone, whatever the batch size.
"""

import numpy as np
from tqdm.auto import tqdm

from ..noise import IndexedNoise
from .flags import require_positive
from .models import default_device, iter_models, make_diffusion
from .outputs import output_prefix, save_figure, save_npz, write_csv
from .plotting import grid_dpi, image_grid_figure, to_uint8_images

DEFAULT_STEPS = (2, 5, 10, 20, 50, 100, 1000)
SAMPLERS = ("ddpm", "ddim")


def sample_images(diffusion, model, num_samples, image_size, seed=0, sampler="ddpm", batch_size=16, device="cpu",
                  clip_denoised=True, on_step=None):
    """uint8 (N, H, W, 3) samples 0..N-1 of `diffusion` (already respaced to the wanted T).

    `on_step()` is called after every denoising step of every batch.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    loop = diffusion.p_sample_loop_progressive if sampler == "ddpm" else diffusion.ddim_sample_loop_progressive
    batches = []
    for start in range(0, num_samples, batch_size):
        indices = range(start, min(start + batch_size, num_samples))
        shape = (len(indices), 3, image_size, image_size)
        steps = loop(model, shape, clip_denoised=clip_denoised, device=device, noise_source=IndexedNoise(seed, indices))
        for out in steps:
            if on_step is not None:
                on_step()
        batches.append(to_uint8_images(out["sample"]))
    return np.concatenate(batches)


def few_step_samples(make_diffusion, models, steps, num_samples, image_size, seed=0, sampler="ddpm", batch_size=16,
                     device="cpu", progress=True):
    """{checkpoint: {T: uint8 samples}}; `make_diffusion(T)` gives the process respaced to T steps."""
    samples = {}
    diffusions = {T: make_diffusion(T) for T in steps}
    evaluations = sum(steps) * -(-num_samples // batch_size)
    for name, model in models:
        samples[name] = {}
        with tqdm(total=evaluations, desc=f"{name} (network calls)", disable=not progress, leave=False) as bar:
            for T in steps:
                samples[name][T] = sample_images(
                    diffusions[T], model, num_samples, image_size, seed, sampler, batch_size, device,
                    on_step=bar.update,
                )
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
    device = device or default_device()
    models = iter_models(checkpoints, settings, device)
    samples = few_step_samples(
        lambda T: make_diffusion(settings, timestep_respacing=str(T)), models, steps, num_samples,
        settings["image_size"], seed, sampler, batch_size, device, progress,
    )
    return write_few_step(samples, output_prefix(out, "few_step_grid"), sampler)
