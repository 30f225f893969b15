"""Few-step ODE sampling of ADM checkpoints with DPM-Solver++, DPM-Solver or UniPC.

The solvers need a continuous-time data prediction x0(x, t) (DPM-Solver++,
UniPC) or noise prediction eps(x, t) (DPM-Solver). This module builds them
from an ADM model and its (unspaced) GaussianDiffusion: the model is called
with ADM's timestep indices, the eps half of a learned-sigma output is kept,
x0- and v-predictions are converted to eps, and eps to x0
(x0 = (x - sigma eps) / alpha). `fast_sample` is the entry point for scripts.
"""

import math

import torch

from .noise_schedule import DiscreteNoiseSchedule, sampling_times
from ..targets import target_of_mean_type, to_eps, to_x0


def mean_prediction(output, x):
    """The mean-parameterisation channels of a model output: all C of them, or the first C of 2C (learned sigma)."""
    channels = x.shape[1]
    if output.shape[0] != x.shape[0] or output.shape[2:] != x.shape[2:]:
        raise ValueError(f"model output shape {tuple(output.shape)} does not match input shape {tuple(x.shape)}")
    if output.shape[1] == channels:
        return output
    if output.shape[1] == 2 * channels:
        return output[:, :channels]
    raise ValueError(f"model output has {output.shape[1]} channels; expected {channels} or {2 * channels}")


def eps_model(model, model_mean_type, noise_schedule, model_kwargs=None, rescale_timesteps=False):
    """A callable (x, t) -> eps at continuous time t, from an ADM model called as model(x, timesteps, **model_kwargs).

    Timesteps are ADM's float indices (t - 1/N) * N, times 1000/N when the
    diffusion was built with rescale_timesteps. v = alpha eps - sigma x0 with
    x = alpha x0 + sigma eps gives eps = sigma x + alpha v.
    """
    target = target_of_mean_type(model_mean_type)
    if target is None:
        raise ValueError(f"fast samplers need an eps, x0 or v model, not {model_mean_type}")
    kwargs = dict(model_kwargs or {})
    index_scale = 1000.0 / noise_schedule.num_timesteps if rescale_timesteps else 1.0

    def eps_fn(x, t):
        index = noise_schedule.model_timestep(t) * index_scale
        index_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        timesteps = torch.full((x.shape[0],), index, device=x.device, dtype=index_dtype)
        prediction = mean_prediction(model(x, timesteps, **kwargs), x)
        if target == "eps":
            return prediction
        return to_eps(target, prediction, x, noise_schedule.alpha(t), noise_schedule.sigma(t))

    return eps_fn


def dynamic_threshold(x0, ratio=0.995):
    """Imagen's dynamic thresholding (used by DPM-Solver++ for pixel models): clip to the per-sample
    `ratio`-quantile s of |x0| (at least 1) and divide by s, so the result lies in [-1, 1]."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"thresholding ratio must be in (0, 1], got {ratio!r}")
    flat = x0.abs().reshape(x0.shape[0], -1)
    # The 'higher' order statistic, as torch.quantile(..., interpolation="higher"), which refuses large inputs.
    rank = math.ceil(ratio * (flat.shape[1] - 1)) + 1
    scale = flat.kthvalue(rank, dim=1).values.clamp(min=1.0).view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, scale), -scale) / scale


def data_prediction(eps_fn, noise_schedule, thresholding=False, thresholding_ratio=0.995):
    """A callable (x, t) -> x0 = (x - sigma_t eps) / alpha_t, optionally dynamically thresholded."""

    def data_fn(x, t):
        x0 = to_x0("eps", eps_fn(x, t), x, noise_schedule.alpha(t), noise_schedule.sigma(t))
        return dynamic_threshold(x0, thresholding_ratio) if thresholding else x0

    return data_fn


# What a solver integrates with: the data prediction x0(x, t) or the noise prediction eps(x, t).
PREDICTIONS = ("x0", "eps")


def solve(solver, model_fn, x_T, noise_schedule, steps, order=3, skip_type="logSNR", lower_order_final=True,
          progress=False, **options):
    """Integrate the probability-flow ODE from t = 1 to t = 1/N with `steps` model evaluations.

    `solver` is a multistep solver (`dpm_solver.sample_dpm_solver_pp`, `unipc.sample_unipc`
    with a data prediction `model_fn`; `dpm_solver.sample_dpm_solver` with a noise prediction);
    `options` are its own keywords (UniPC's `variant`).
    """
    times = sampling_times(noise_schedule, skip_type, steps)
    return solver(
        model_fn, x_T, noise_schedule, times, order=order, lower_order_final=lower_order_final, progress=progress,
        **options,
    )


def fast_sample(
    solver,
    model,
    diffusion,
    shape=None,
    *,
    x_T=None,
    steps=20,
    order=3,
    skip_type="logSNR",
    model_kwargs=None,
    noise_source=None,
    device=None,
    lower_order_final=True,
    thresholding=False,
    prediction="x0",
    progress=False,
    **options,
):
    """Samples from an ADM model with a multistep `solver` (see `solve`) in `steps` evaluations.

    `diffusion` is the unspaced GaussianDiffusion the model was trained with
    (its alphas_cumprod, model_mean_type and rescale_timesteps are read).
    The start x_T is given, or drawn with shape `shape` from
    `noise_source.randn_like` (e.g. guided_diffusion.noise.IndexedNoise) or
    torch.randn; nothing else is random. `prediction` (one of PREDICTIONS) is
    what the solver integrates with; `options` go to the solver. Returns x at
    t = 1/N, in the model's data scale (not clipped).
    """
    if getattr(diffusion, "original_num_steps", diffusion.num_timesteps) != diffusion.num_timesteps:
        raise ValueError("fast samplers need the unspaced diffusion: leave --timestep_respacing empty")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown solver prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
    if thresholding and prediction != "x0":
        raise ValueError("dynamic thresholding clips the data prediction; it needs a data-prediction solver")
    noise_schedule = DiscreteNoiseSchedule(diffusion.alphas_cumprod)
    eps_fn = eps_model(
        model, diffusion.model_mean_type, noise_schedule, model_kwargs,
        rescale_timesteps=getattr(diffusion, "rescale_timesteps", False),
    )
    model_fn = data_prediction(eps_fn, noise_schedule, thresholding=thresholding) if prediction == "x0" else eps_fn
    if x_T is None:
        if shape is None:
            raise ValueError("fast_sample needs either shape or x_T")
        if device is None:
            device = next(model.parameters()).device
        blank = torch.empty(tuple(shape), device=device)
        x_T = noise_source.randn_like(blank) if noise_source is not None else torch.randn_like(blank)
    with torch.no_grad():
        return solve(
            solver, model_fn, x_T, noise_schedule, steps, order=order, skip_type=skip_type,
            lower_order_final=lower_order_final, progress=progress, **options,
        )
