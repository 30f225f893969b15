"""The MSE-step curve (Fig. 4, Fig. 10): per timestep, the MSE between the network's noise estimate and the true noise,
and the error of the image estimate it implies (Eq. 6).

The "Initial" curve is the MSE between the network input x_t and the noise,
a_t E[x0^2] + (1 - sqrt(1 - a_t))^2 E[eps^2] in expectation: below it a network
has removed part of the noise, above it the output is further from the target
than its input. Every checkpoint sees the same images and the same noise, and
a model predicting x0 or v is compared through the epsilon its prediction implies.

The x0-space column is the MSE of the unclipped one-step image estimate x0_hat.
By Eq. 6, x0_hat - x0 = (eps - eps_hat) / sqrt(SNR(t)), so it is the noise error
divided by SNR(t): the error a constant weighting leaves unweighted at large t.
For "Initial" it is the image error of taking x_t itself as the noise estimate.
"""

import numpy as np
import torch as th
from tqdm.auto import tqdm

from guided_diffusion.dist_util import resolve_device
from guided_diffusion.image_ops import from_uint8_nhwc
from guided_diffusion.noise import IndexedNoise
from guided_diffusion.targets import to_eps, to_x0

from .flags import require_positive
from .images import read_images
from .models import iter_models, make_diffusion
from .outputs import output_prefix, save_figure, write_csv
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


def _alpha_sigma(diffusion, t, device):
    a = th.as_tensor(diffusion.alphas_cumprod, device=device)[t].view(-1, 1, 1, 1)
    return a.sqrt(), (1.0 - a).sqrt()


def estimates(diffusion, model, x_t, t):
    """(eps_hat, x0_hat) of the model at x_t: its unclipped x0 prediction and the noise that implies."""
    pred_xstart = diffusion.p_mean_variance(model, x_t, t, clip_denoised=False)["pred_xstart"]
    eps = to_eps("x0", pred_xstart.double(), x_t.double(), *_alpha_sigma(diffusion, t, x_t.device))
    return eps.to(x_t.dtype), pred_xstart


def epsilon_estimate(diffusion, model, x_t, t):
    """The noise the model implies for x_t, from its unclipped x0 prediction: (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)."""
    return estimates(diffusion, model, x_t, t)[0]


def _per_image_mse(a, b):
    return ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1)


def initial_mse(diffusion, images, noise, timesteps):
    """{"eps", "x0"}: (len(timesteps), N) per-image errors of taking x_t itself as the noise estimate."""
    eps_rows, x0_rows = [], []
    for step in timesteps:
        t = th.full((images.shape[0],), step, dtype=th.long)
        x_t = diffusion.q_sample(images, t, noise=noise)
        alpha, sigma = _alpha_sigma(diffusion, t, images.device)
        eps_rows.append(_per_image_mse(x_t, noise))
        x0_rows.append(_per_image_mse(to_x0("eps", x_t.double(), x_t.double(), alpha, sigma), images))
    return {"eps": th.stack(eps_rows).numpy(), "x0": th.stack(x0_rows).numpy()}


@th.no_grad()
def model_mse(diffusion, model, images, noise, timesteps, batch_size, device, progress=True, description=None):
    """{"eps", "x0"}: (len(timesteps), N) per-image MSE of the model's noise estimate and of its image estimate."""
    errors = {space: np.zeros((len(timesteps), images.shape[0])) for space in ("eps", "x0")}
    for row, step in enumerate(tqdm(timesteps, desc=description, disable=not progress, leave=False)):
        for start in range(0, images.shape[0], batch_size):
            x0 = images[start : start + batch_size].to(device)
            eps = noise[start : start + batch_size].to(device)
            t = th.full((x0.shape[0],), step, dtype=th.long, device=device)
            eps_hat, x0_hat = estimates(diffusion, model, diffusion.q_sample(x0, t, noise=eps), t)
            errors["eps"][row, start : start + x0.shape[0]] = _per_image_mse(eps_hat, eps).cpu().numpy()
            errors["x0"][row, start : start + x0.shape[0]] = _per_image_mse(x0_hat, x0).cpu().numpy()
    return errors


def mse_step_curves(diffusion, models, images, timesteps, seed=0, batch_size=16, device="cpu", progress=True):
    """{curve name: {"eps", "x0"}: (len(timesteps), N) per-image MSE}: "Initial" first, then one per (name, model).

    `images` are uint8 (N, H, W, 3); `models` is an iterable of (name, model),
    consumed lazily so that one model at a time needs to be in memory.
    """
    x0 = from_uint8_nhwc(images)
    noise = image_noise(x0.shape, seed)
    curves = {INITIAL_CURVE: initial_mse(diffusion, x0, noise, timesteps)}
    for name, model in models:
        curves[name] = model_mse(diffusion, model, x0, noise, timesteps, batch_size, device, progress, name)
    return curves


def _mean_and_sem(per_image):
    count = per_image.shape[1]
    sems = per_image.std(axis=1, ddof=1) / np.sqrt(count) if count > 1 else np.full(per_image.shape[0], np.nan)
    return per_image.mean(axis=1), sems


def write_mse_step(curves, timesteps, prefix):
    rows = []
    for name, errors in curves.items():
        (eps_mean, eps_sem), (x0_mean, x0_sem) = _mean_and_sem(errors["eps"]), _mean_and_sem(errors["x0"])
        count = errors["eps"].shape[1]
        rows.extend(
            (step, name, float(m), float(s), float(xm), float(xs), count)
            for step, m, s, xm, xs in zip(timesteps, eps_mean, eps_sem, x0_mean, x0_sem)
        )
    header = ("t", "curve", "mse", "sem", "x0_mse", "x0_sem", "num_images")
    csv_path = write_csv(prefix + ".csv", header, rows)

    figure = new_figure(13, 3.8)
    linear_axes, log_axes, x0_axes = figure.subplots(1, 3)
    for index, (name, errors) in enumerate(curves.items()):
        style = dict(color="black", linestyle="--") if name == INITIAL_CURVE else dict(color=f"C{index - 1}")
        for axes in (linear_axes, log_axes):
            axes.plot(timesteps, errors["eps"].mean(axis=1), label=name, **style)
        x0_axes.plot(timesteps, errors["x0"].mean(axis=1), label=name, **style)
    for axes, scale, label in (
        (linear_axes, "linear", "MSE to the true noise"),
        (log_axes, "log", "MSE to the true noise"),
        (x0_axes, "log", "MSE of the one-step x0 estimate (Eq. 6)"),
    ):
        axes.set_yscale(scale)
        axes.set_xlabel("timestep t")
        axes.set_ylabel(label)
        axes.grid(True, which="major", alpha=0.3)
    linear_axes.legend(fontsize=8)
    count = next(iter(curves.values()))["eps"].shape[1]
    figure.suptitle(f"MSE-step curves ({count} images, same noise for every model)", fontsize=10)
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
