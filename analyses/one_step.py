"""One-step estimation of x0 (Fig. 2 right, Fig. 3): noise a clean image to x_t, apply the network once, read x0_hat.

Each image gets one fixed noise draw (a function of the seed and its index),
used at every t and for every checkpoint, so differences between columns are
the noise level and differences between checkpoints are the models.
"""

import numpy as np
import torch as th
from tqdm.auto import tqdm

from .mse_step import image_noise
from .images import read_images
from .flags import require_positive
from .models import iter_models, make_diffusion
from .outputs import output_prefix, save_figure, write_csv
from guided_diffusion.dist_util import resolve_device
from guided_diffusion.image_ops import from_uint8_nhwc, to_uint8_nhwc
from .plotting import grid_dpi, image_grid_figure

DEFAULT_TIMESTEPS = (999, 950, 900, 800, 600, 400, 200)


def noisy_inputs(diffusion, images, timesteps, seed=0):
    """{t: x_t} for model-space images (N, C, H, W), with the same per-image noise at every t."""
    noise = image_noise(images.shape, seed)
    inputs = {}
    for step in timesteps:
        if not 0 <= step < diffusion.num_timesteps:
            raise ValueError(f"--timesteps: {step} is outside 0..{diffusion.num_timesteps - 1}")
        inputs[step] = diffusion.q_sample(images, th.full((images.shape[0],), step, dtype=th.long), noise=noise)
    return inputs


@th.no_grad()
def one_step_estimates(diffusion, model, inputs, clip_denoised=True, batch_size=16, device="cpu"):
    """{t: x0_hat} (on the CPU) from one network evaluation at every x_t of `inputs`."""
    estimates = {}
    for step, x_t in inputs.items():
        parts = []
        for start in range(0, x_t.shape[0], batch_size):
            x = x_t[start : start + batch_size].to(device)
            t = th.full((x.shape[0],), step, dtype=th.long, device=device)
            parts.append(diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)["pred_xstart"].float().cpu())
        estimates[step] = th.cat(parts)
    return estimates


def one_step_analysis(
    diffusion, models, images, timesteps=DEFAULT_TIMESTEPS, seed=0, clip_denoised=True, batch_size=16, device="cpu",
    progress=True,
):
    """x_t for every t and {checkpoint: {t: x0_hat}}; `images` uint8 (N, H, W, 3), `models` (name, model) pairs."""
    x0 = from_uint8_nhwc(images)
    inputs = noisy_inputs(diffusion, x0, timesteps, seed)
    estimates = {}
    for name, model in tqdm(models, desc="checkpoints", disable=not progress, leave=False):
        estimates[name] = one_step_estimates(diffusion, model, inputs, clip_denoised, batch_size, device)
    return {"x0": x0, "inputs": inputs, "estimates": estimates}


def _channel_means_255(x):
    """Per-image mean of each channel, in [0, 255] units, of model-space images."""
    return ((x.double() + 1.0) * 127.5).mean(dim=(2, 3)).numpy()


def write_one_step(result, prefix):
    """A grid per checkpoint, one comparison grid of all checkpoints, and the errors per image and t."""
    x0, inputs, estimates = result["x0"], result["inputs"], result["estimates"]
    timesteps = list(inputs)
    clean = to_uint8_nhwc(x0)
    noisy = {t: to_uint8_nhwc(x) for t, x in inputs.items()}
    columns = ["x0"] + [f"t={t}" for t in timesteps]

    rows = []
    clean_means = _channel_means_255(x0)
    for name, by_t in estimates.items():
        for t in timesteps:
            mse = ((by_t[t].double() - x0.double()) ** 2).flatten(1).mean(dim=1).numpy()
            shift = np.linalg.norm(_channel_means_255(by_t[t]) - clean_means, axis=1)
            rows.extend((name, i, t, float(mse[i]), float(shift[i])) for i in range(x0.shape[0]))
    paths = {"csv": write_csv(prefix + ".csv", ("checkpoint", "image", "t", "x0_mse", "mean_shift_l2"), rows)}

    dpi = grid_dpi(clean.shape[1])
    estimated = {name: {t: to_uint8_nhwc(x) for t, x in by_t.items()} for name, by_t in estimates.items()}
    for name, by_t in estimated.items():
        cells, labels = [], []
        for i in range(clean.shape[0]):
            cells.append([None] + [noisy[t][i] for t in timesteps])
            cells.append([clean[i]] + [by_t[t][i] for t in timesteps])
            labels += [f"#{i} x_t", f"#{i} x0_hat"]
        figure = image_grid_figure(cells, labels, columns, title=f"One-step x0 estimate: {name}")
        paths[f"png_{name}"] = save_figure(figure, f"{prefix}_{name}.png", dpi=dpi)

    cells, labels = [], []
    for i in range(clean.shape[0]):
        cells.append([clean[i]] + [noisy[t][i] for t in timesteps])
        labels.append(f"#{i} x_t")
        for name, by_t in estimated.items():
            cells.append([None] + [by_t[t][i] for t in timesteps])
            labels.append(f"#{i} {name}")
    figure = image_grid_figure(cells, labels, columns, title="One-step x0 estimate from the same x_t")
    paths["png"] = save_figure(figure, prefix + ".png", dpi=dpi)
    return paths


def run(settings, checkpoints, data_dir, out=None, num_images=4, timesteps=DEFAULT_TIMESTEPS, seed=0,
        clip_denoised=True, batch_size=16, device=None, progress=True):
    """Read `num_images` real images, estimate x0 at every t for each (name, path) checkpoint, write PNGs and CSV."""
    require_positive(num_images, "--num_images")
    require_positive(batch_size, "--batch_size")
    device = resolve_device(device)
    diffusion = make_diffusion(settings)
    images = read_images(data_dir, num_images, settings["image_size"])
    models = iter_models(checkpoints, settings, device)
    result = one_step_analysis(diffusion, models, images, timesteps, seed, clip_denoised, batch_size, device, progress)
    return write_one_step(result, output_prefix(out, "one_step_x0"))
