"""Sampling with a subset of the training timesteps (Nichol & Dhariwal 2021, Sec. 4)."""

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """The set of original timesteps to keep.

    `section_counts` is ADM's syntax: "250" keeps 250 evenly spaced steps;
    "10,15,20" splits [0, T) into three equal sections and keeps 10, 15 and 20
    steps from them; "ddim50" keeps the integer stride that gives exactly 50
    steps (DDIM's spacing). A list of ints is read like a comma string.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(f"bad --timestep_respacing {section_counts!r}: expected 'ddimN' with an integer N") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"bad --timestep_respacing {section_counts!r}: no integer stride gives exactly {desired} of {num_timesteps} steps"
            )
        try:
            section_counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad --timestep_respacing {section_counts!r}: expected 'N', 'N1,N2,...' or 'ddimN'"
            ) from None
    if not section_counts or any(count < 1 for count in section_counts):
        raise ValueError(f"bad --timestep_respacing {section_counts!r}: every section needs at least one step")
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start = 0
    kept = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"bad --timestep_respacing: cannot take {count} steps from a section of {size} "
                f"(T={num_timesteps} split into {len(section_counts)} sections)"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept.extend(start + round(j * stride) for j in range(count))
        start += size
    return set(kept)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process over a subset of a base process's timesteps.

    The kept steps keep their a_t, so the betas between them are recomputed;
    the model is always called with the original timestep indices.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        base = GaussianDiffusion(**kwargs)
        self.original_num_steps = base.num_timesteps
        if not self.use_timesteps or not self.use_timesteps <= set(range(self.original_num_steps)):
            raise ValueError(f"timesteps to keep must be a non-empty subset of 0..{self.original_num_steps - 1}")
        self.timestep_map = sorted(self.use_timesteps)
        kept_alphas_cumprod = base.alphas_cumprod[self.timestep_map]
        previous = np.append(1.0, kept_alphas_cumprod[:-1])
        kwargs["betas"] = 1.0 - kept_alphas_cumprod / previous
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _OriginalTimesteps):
            return model
        return _OriginalTimesteps(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _scale_timesteps(self, t):
        # The wrapper maps and scales; scaling here too would do it twice.
        return t


class _OriginalTimesteps:
    """Calls a model with original timestep indices instead of spaced ones."""

    def __init__(self, model, timestep_map, rescale_timesteps, original_num_steps):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps

    def __call__(self, x, ts, **kwargs):
        mapping = th.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        original = mapping[ts]
        if self.rescale_timesteps:
            original = original.float() * (1000.0 / self.original_num_steps)
        return self.model(x, original, **kwargs)
