"""Gaussian diffusion: the forward process, the learned reverse process, its losses and samplers.

Notation follows the paper: a_t is the cumulative product of (1 - beta_s) for
s <= t (`alphas_cumprod`), x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Eq. 3) and
SNR(t) = a_t / (1 - a_t) (Eq. 4). The interface (method names, arguments,
returned dictionaries) is ADM's, so code written against guided-diffusion runs
unchanged.
"""

import collections
import enum
import math

import numpy as np
import torch as th

from . import targets
from .losses import discretized_gaussian_log_likelihood, normal_kl
from .targets import ModelMeanType
from .weighting import LossWeighting


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Betas of a named schedule, float64.

    "linear" is Ho et al.'s 1e-4..0.02 for 1000 steps, rescaled so that any
    number of steps spans the same noise range; "cosine" is Nichol & Dhariwal's.
    """
    if num_diffusion_timesteps < 1:
        raise ValueError(f"--diffusion_steps must be at least 1, got {num_diffusion_timesteps}")
    if schedule_name == "linear":
        if num_diffusion_timesteps <= 50:
            raise ValueError(
                f"the linear schedule reaches beta >= 1 at --diffusion_steps {num_diffusion_timesteps}; "
                "use more than 50 steps or --noise_schedule cosine"
            )
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps,
            lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
        )
    raise ValueError(f"unknown --noise_schedule {schedule_name!r}; expected 'linear' or 'cosine'")


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    """Discretise a continuous a(t) on [0, 1]; betas are clipped at `max_beta` to avoid a singular last step."""
    steps = np.arange(num_diffusion_timesteps, dtype=np.float64)
    ratios = np.array(
        [alpha_bar((i + 1) / num_diffusion_timesteps) / alpha_bar(i / num_diffusion_timesteps) for i in steps]
    )
    return np.minimum(1.0 - ratios, max_beta)


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen."""

    LEARNED = enum.auto()  # the network outputs log-variance
    FIXED_SMALL = enum.auto()  # the posterior variance beta-tilde
    FIXED_LARGE = enum.auto()  # beta
    LEARNED_RANGE = enum.auto()  # the network interpolates between the two in log space


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()  # MSE plus the VB term scaled by T/1000, for learned variances
    KL = enum.auto()
    RESCALED_KL = enum.auto()

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)


def mean_flat(tensor):
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def _extract_into_tensor(arr, timesteps, broadcast_shape):
    """Gather arr[timesteps] as a float32 tensor broadcastable to `broadcast_shape`."""
    res = _on_device(arr, timesteps.device)[timesteps].float()
    while res.ndim < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


# Each schedule array copied to each device once: a copy per call would make the host wait for the GPU
# (a blocking copy) about 15 times per training step and 8 to 12 times per sampling step.
_DEVICE_ARRAYS = collections.OrderedDict()
_DEVICE_ARRAYS_KEPT = 256


def _on_device(arr, device):
    key = (id(arr), str(device))
    held = _DEVICE_ARRAYS.get(key)
    if held is None or held[0] is not arr:  # the array itself is kept, so its id cannot be reused meanwhile
        held = _DEVICE_ARRAYS[key] = (arr, th.from_numpy(arr).to(device=device))
        if len(_DEVICE_ARRAYS) > _DEVICE_ARRAYS_KEPT:
            _DEVICE_ARRAYS.popitem(last=False)
    return held[1]


def _last(iterable):
    return collections.deque(iterable, maxlen=1).pop()


def _default_randn_like(x):
    return th.randn_like(x)


class GaussianDiffusion:
    """The diffusion process for a given beta schedule and model parameterisation.

    `loss_weighting` is a `weighting.LossWeighting` (a dict of its `from_flags`
    keyword arguments is read as one); None means ADM's constant weighting.
    """

    def __init__(
        self,
        *,
        betas,
        model_mean_type,
        model_var_type,
        loss_type,
        rescale_timesteps=False,
        loss_weighting=None,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        with np.errstate(divide="ignore"):  # a_T = 0 is legal; the weighting check below reports it
            self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
            self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log is taken from t = 1 there
        # (from beta_0 for a one-step process, which has no t = 1).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        # The fixed "large" variance is beta, with the same t = 0 exception.
        self.large_variance = np.append(first, betas[1:])
        # Their logs, kept (not taken per call) so that each reaches a GPU once (_on_device).
        self.log_large_variance, self.log_betas = np.log(self.large_variance), np.log(self.betas)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

        if not isinstance(loss_weighting, LossWeighting):
            loss_weighting = LossWeighting.from_flags(**(loss_weighting or {}))
        self.loss_weighting = loss_weighting
        target = targets.target_of_mean_type(model_mean_type)
        if target is None and loss_weighting.name != "constant":
            raise ValueError("loss weighting needs an eps, x0 or v model, not PREVIOUS_X")
        self.mse_weights = loss_weighting.weights(self.alphas_cumprod, target or "eps")

    # ---- forward process -------------------------------------------------

    def q_mean_variance(self, x_start, t):
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Draw x_t ~ q(x_t | x_0) (Eq. 3)."""
        if noise is None:
            noise = th.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start {tuple(x_start.shape)}")
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape")
        posterior_mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        posterior_variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        posterior_log_variance_clipped = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return posterior_mean, posterior_variance, posterior_log_variance_clipped

    # ---- parameterisation conversions --------------------------------------

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return (
            _extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
            - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t
        )

    def _alpha_sigma(self, t, shape):
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, shape),
            _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, shape),
        )

    def _predict_xstart_from_v(self, x_t, t, v):
        return targets.to_x0("v", v, x_t, *self._alpha_sigma(t, x_t.shape))

    def _predict_v(self, x_start, t, noise):
        return targets.from_x0_and_eps("v", x_start, noise, *self._alpha_sigma(t, x_start.shape))

    def _scale_timesteps(self, t):
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ---- reverse process ---------------------------------------------------

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Apply the model to get p(x_{t-1} | x_t) and the prediction of x_0.

        Returns a dict with `mean`, `variance`, `log_variance`, `pred_xstart`.
        """
        model_kwargs = model_kwargs or {}
        B, C = x.shape[:2]
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape != (B, C * 2, *x.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output {2 * C} channels, got {tuple(model_output.shape)}"
                )
            model_output, model_var_values = th.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = model_var_values
                model_variance = th.exp(model_log_variance)
            else:
                min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _extract_into_tensor(self.log_betas, t, x.shape)
                frac = (model_var_values + 1) / 2  # the network outputs [-1, 1]
                model_log_variance = frac * max_log + (1 - frac) * min_log
                model_variance = th.exp(model_log_variance)
        else:
            variance, log_variance = {
                # The posterior variance at t = 0 keeps the final step's log-likelihood finite.
                ModelVarType.FIXED_LARGE: (self.large_variance, self.log_large_variance),
                ModelVarType.FIXED_SMALL: (self.posterior_variance, self.posterior_log_variance_clipped),
            }[self.model_var_type]
            model_variance = _extract_into_tensor(variance, t, x.shape)
            model_log_variance = _extract_into_tensor(log_variance, t, x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x_t=x, t=t, xprev=model_output))
            model_mean = model_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                raw_xstart = model_output
            elif self.model_mean_type == ModelMeanType.EPSILON:
                raw_xstart = self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output)
            else:
                raw_xstart = self._predict_xstart_from_v(x_t=x, t=t, v=model_output)
            pred_xstart = process_xstart(raw_xstart)
            model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)

        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
        }

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Shift the mean by the variance times the gradient of log p(y|x) (Dhariwal & Nichol, Alg. 1)."""
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Score-based conditioning for DDIM (Song et al. 2020): shift eps by -sqrt(1 - a_t) grad."""
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(x_start=out["pred_xstart"], x_t=x, t=t)
        return out

    def p_sample(
        self,
        model,
        x,
        t,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        noise_source=None,
    ):
        """One ancestral step x_t -> x_{t-1}; returns `sample` and `pred_xstart`."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        randn_like = noise_source.randn_like if noise_source is not None else _default_randn_like
        noise = randn_like(x)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + nonzero_mask * th.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, *args, **kwargs):
        """Ancestral sampling from x_T to x_0; takes p_sample_loop_progressive's arguments, returns the sample."""
        return _last(self.p_sample_loop_progressive(model, shape, *args, **kwargs))["sample"]

    def _initial_noise(self, shape, noise, device, noise_source):
        if noise is not None:
            return noise
        if device is None:
            device = "cpu"
        like = th.empty(*shape, device=device)
        return noise_source.randn_like(like) if noise_source is not None else th.randn(*shape, device=device)

    def _timesteps(self, progress):
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, leave=False)
        return indices

    def p_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        noise_source=None,
    ):
        """Yield the output of every ancestral step, from t = T-1 down to 0."""
        yield from self._loop_progressive(
            self.p_sample,
            model,
            shape,
            noise,
            device,
            progress,
            noise_source,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )

    def _loop_progressive(self, step, model, shape, noise, device, progress, noise_source, **step_kwargs):
        if device is None:
            device = next(model.parameters()).device
        img = self._initial_noise(shape, noise, device, noise_source)
        for i in self._timesteps(progress):
            t = th.full((shape[0],), i, device=device, dtype=th.long)
            with th.no_grad():
                out = step(model, img, t, noise_source=noise_source, **step_kwargs)
            yield out
            img = out["sample"]

    def ddim_sample(
        self,
        model,
        x,
        t,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        eta=0.0,
        noise_source=None,
    ):
        """One DDIM step (Song et al. 2020, Eq. 12); eta = 0 is deterministic, eta = 1 is DDPM-like."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * th.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * th.sqrt(1 - alpha_bar / alpha_bar_prev)
        randn_like = noise_source.randn_like if noise_source is not None else _default_randn_like
        noise = randn_like(x)
        mean_pred = out["pred_xstart"] * th.sqrt(alpha_bar_prev) + th.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        sample = mean_pred + nonzero_mask * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """Deterministic DDIM inversion x_t -> x_{t+1}."""
        if eta != 0.0:
            raise ValueError("DDIM inversion is deterministic: eta must be 0")
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs
        )
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        mean_pred = out["pred_xstart"] * th.sqrt(alpha_bar_next) + th.sqrt(1 - alpha_bar_next) * eps
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, *args, **kwargs):
        """DDIM sampling from x_T to x_0; takes ddim_sample_loop_progressive's arguments, returns the sample."""
        return _last(self.ddim_sample_loop_progressive(model, shape, *args, **kwargs))["sample"]

    def ddim_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        eta=0.0,
        noise_source=None,
    ):
        """Yield the output of every DDIM step, from t = T-1 down to 0."""
        yield from self._loop_progressive(
            self.ddim_sample,
            model,
            shape,
            noise,
            device,
            progress,
            noise_source,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
            eta=eta,
        )

    # ---- losses ------------------------------------------------------------

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """The variational-bound term L_t in bits per dimension (the decoder NLL at t = 0)."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        output = th.where(t == 0, decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-sample training losses for a batch at timesteps t.

        Returns a dict with `loss` and, for MSE losses, `mse` (the unweighted
        error in the model's target space) and `vb` when the variance is learned.
        The loss weighting multiplies the MSE term only: the VB term trains the
        variance and is never reweighted.
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = th.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)

        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(
                model=model, x_start=x_start, x_t=x_t, t=t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            B, C = x_t.shape[:2]
            if model_output.shape != (B, C * 2, *x_t.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output {2 * C} channels, got {tuple(model_output.shape)}"
                )
            model_output, model_var_values = th.split(model_output, C, dim=1)
            # The VB term learns the variance only: the mean it sees is detached.
            frozen_out = th.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(
                model=lambda *args, frozen=frozen_out: frozen,
                x_start=x_start,
                x_t=x_t,
                t=t,
                clip_denoised=False,
            )["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # ADM's scaling, so that the VB term's magnitude does not depend on T.
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)

        target = {
            ModelMeanType.PREVIOUS_X: lambda: self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)[0],
            ModelMeanType.START_X: lambda: x_start,
            ModelMeanType.EPSILON: lambda: noise,
            ModelMeanType.VELOCITY: lambda: self._predict_v(x_start, t, noise),
        }[self.model_mean_type]()
        if model_output.shape != target.shape:
            raise ValueError(f"model output {tuple(model_output.shape)} differs from the target {tuple(target.shape)}")
        terms["mse"] = mean_flat((target - model_output) ** 2)
        weighted_mse = _extract_into_tensor(self.mse_weights, t, terms["mse"].shape) * terms["mse"]
        terms["loss"] = weighted_mse + terms["vb"] if "vb" in terms else weighted_mse
        return terms

    def _prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) in bits per dimension; not trainable."""
        batch_size = x_start.shape[0]
        t = th.full((batch_size,), self.num_timesteps - 1, device=x_start.device, dtype=th.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        kl_prior = normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)
        return mean_flat(kl_prior) / np.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        """The full variational bound in bits per dimension, with its per-timestep terms.

        Returns `total_bpd`, `prior_bpd` (per sample) and `vb`, `xstart_mse`,
        `mse` (per sample and timestep, shape (B, T)).
        """
        device = x_start.device
        batch_size = x_start.shape[0]
        vb, xstart_mse, mse = [], [], []
        for step in reversed(range(self.num_timesteps)):
            t = th.full((batch_size,), step, device=device, dtype=th.long)
            noise = th.randn_like(x_start)
            x_t = self.q_sample(x_start=x_start, t=t, noise=noise)
            with th.no_grad():
                out = self._vb_terms_bpd(
                    model, x_start=x_start, x_t=x_t, t=t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
                )
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        # Collected from t = T-1 down to 0; reported in increasing t as ADM does.
        vb = th.stack(vb[::-1], dim=1)
        xstart_mse = th.stack(xstart_mse[::-1], dim=1)
        mse = th.stack(mse[::-1], dim=1)
        prior_bpd = self._prior_bpd(x_start)
        total_bpd = vb.sum(dim=1) + prior_bpd
        return {
            "total_bpd": total_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }
