"""The MSE-step curve (Fig. 4, Fig. 10): per timestep, the MSE between the network's noise estimate and the true noise.

The "Initial" curve is the MSE between the network input x_t and the noise,
a_t E[x0^2] + (1 - sqrt(1 - a_t))^2 E[eps^2] in expectation: below it a network
has removed part of the noise, above it the output is further from the target
than its input. Every checkpoint sees the same images and the same noise, and
a model predicting x0 or v is compared through the epsilon its prediction implies.
"""

import numpy as np
import torch as th
from tqdm.auto import tqdm

from guided_diffusion.noise import IndexedNoise
from guided_diffusion.targets import to_eps
from .images import read_images
from .flags import require_positive
from .models import iter_models, make_diffusion
from .outputs import output_prefix, save_figure, write_csv
from guided_diffusion.dist_util import resolve_device
from guided_diffusion.image_ops import from_uint8_nhwc
from .plotting import new_figure

INITIAL_CURVE = "Initial"


def analysis_timesteps(num_timesteps, stride=1):
    """0, stride, 2*stride, ... and always the last step T-1, where the bias is largest."""
    if stride < 1:
        raise ValueError(f"--stride must be at least 1, got {stride}")
    return sorted(set(range(0, num_timesteps, stride)) | {num_timesteps - 1})


def image_noise(images_shape, seed):
    """One standard normal draw per image, a function of (seed, image index) only."""
    return IndexedNoise(seed, range(images_shape[0])).randn_like(th.empty(images_shape))


def epsilon_estimate(diffusion, model, x_t, t):
    """The noise the model implies for x_t, from its unclipped x0 prediction: (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)."""
    pred_xstart = diffusion.p_mean_variance(model, x_t, t, clip_denoised=False)["pred_xstart"]
    a = th.as_tensor(diffusion.alphas_cumprod, device=x_t.device)[t].view(-1, 1, 1, 1)
    return to_eps("x0", pred_xstart.double(), x_t.double(), a.sqrt(), (1.0 - a).sqrt()).to(x_t.dtype)


def _per_image_mse(a, b):
    return ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1)


def initial_mse(diffusion, images, noise, timesteps):
    """(len(timesteps), N) per-image MSE between x_t and its noise."""
    per_t = []
    for step in timesteps:
        t = th.full((images.shape[0],), step, dtype=th.long)
        per_t.append(_per_image_mse(diffusion.q_sample(images, t, noise=noise), noise))
    return th.stack(per_t).numpy()


@th.no_grad()
def model_mse(diffusion, model, images, noise, timesteps, batch_size, device, progress=True, description=None):
    """(len(timesteps), N) per-image MSE between the model's epsilon estimate and the noise."""
    per_t = np.zeros((len(timesteps), images.shape[0]))
    for row, step in enumerate(tqdm(timesteps, desc=description, disable=not progress, leave=False)):
        for start in range(0, images.shape[0], batch_size):
            x0 = images[start : start + batch_size].to(device)
            eps = noise[start : start + batch_size].to(device)
            t = th.full((x0.shape[0],), step, dtype=th.long, device=device)
            x_t = diffusion.q_sample(x0, t, noise=eps)
            estimate = epsilon_estimate(diffusion, model, x_t, t)
            per_t[row, start : start + x0.shape[0]] = _per_image_mse(estimate, eps).cpu().numpy()
    return per_t


def mse_step_curves(diffusion, models, images, timesteps, seed=0, batch_size=16, device="cpu", progress=True):
    """{curve name: (len(timesteps), N) per-image MSE}: "Initial" first, then one per (name, model).

    `images` are uint8 (N, H, W, 3); `models` is an iterable of (name, model),
    consumed lazily so that one model at a time needs to be in memory.
    """
    x0 = from_uint8_nhwc(images)
    noise = image_noise(x0.shape, seed)
    curves = {INITIAL_CURVE: initial_mse(diffusion, x0, noise, timesteps)}
    for name, model in models:
        curves[name] = model_mse(diffusion, model, x0, noise, timesteps, batch_size, device, progress, name)
    return curves


def write_mse_step(curves, timesteps, prefix):
    rows = []
    for name, per_image in curves.items():
        count = per_image.shape[1]
        means = per_image.mean(axis=1)
        sems = per_image.std(axis=1, ddof=1) / np.sqrt(count) if count > 1 else np.full(len(timesteps), np.nan)
        rows.extend((step, name, float(m), float(s), count) for step, m, s in zip(timesteps, means, sems))
    csv_path = write_csv(prefix + ".csv", ("t", "curve", "mse", "sem", "num_images"), rows)

    figure = new_figure(10, 3.8)
    linear_axes, log_axes = figure.subplots(1, 2)
    for index, (name, per_image) in enumerate(curves.items()):
        style = dict(color="black", linestyle="--") if name == INITIAL_CURVE else dict(color=f"C{index - 1}")
        for axes in (linear_axes, log_axes):
            axes.plot(timesteps, per_image.mean(axis=1), label=name, **style)
    for axes, scale in ((linear_axes, "linear"), (log_axes, "log")):
        axes.set_yscale(scale)
        axes.set_xlabel("timestep t")
        axes.set_ylabel("MSE to the true noise")
        axes.grid(True, which="major", alpha=0.3)
    linear_axes.legend(fontsize=8)
    count = next(iter(curves.values())).shape[1]
    figure.suptitle(f"MSE-step curve ({count} images, same noise for every model)", fontsize=10)
    png_path = save_figure(figure, prefix + ".png", dpi=100)
    return {"png": png_path, "csv": csv_path}


def run(settings, checkpoints, data_dir, out=None, num_images=32, stride=1, seed=0, batch_size=16, device=None,
        progress=True):
    """Read `num_images` real images, compute every curve for the (name, path) `checkpoints`, write PNG and CSV."""
    require_positive(num_images, "--num_images")
    require_positive(batch_size, "--batch_size")
    device = resolve_device(device)
    diffusion = make_diffusion(settings)
    images = read_images(data_dir, num_images, settings["image_size"])
    timesteps = analysis_timesteps(diffusion.num_timesteps, stride)
    models = iter_models(checkpoints, settings, device)
    curves = mse_step_curves(diffusion, models, images, timesteps, seed, batch_size, device, progress)
    return write_mse_step(curves, timesteps, output_prefix(out, "mse_step"))
