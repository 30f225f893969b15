"""Timestep samplers for training: uniform, importance sampling by the loss's second moment or by the loss weight,
and the field's noise-level densities (noise_levels.py), as importance samplers or as part of the objective.

Every sampler draws t ~ p(t) and returns the importance weight 1 / (T p(t)),
by which the training loop multiplies the per-sample loss, so that the
expected loss is the uniform average (1/T) sum_t L(t) whatever p is.

`loss-weight` draws t with p(t) = w(t) / sum_s w(s), w being the weighting the
diffusion already multiplies its MSE term by (`diffusion.mse_weights`). The
loss keeps that multiplication: the estimator is then
w(t) mse(t) / (T p(t)) = mean(w) * mse(t), which is unbiased for
(1/T) sum_t w(t) mse(t) (the objective of uniform sampling) and no longer
carries w(t)'s spread into the gradient: the weighting moves from the loss
into the sampling. Dividing w out of the loss instead would change the
objective's scale by mean(w) and break the comparison with uniform runs; the
VB term of learned-variance models is reweighted the same way and stays unbiased.
"""

from abc import ABC, abstractmethod

import numpy as np
import torch as th
import torch.distributed as dist


from .noise_levels import density_sampler_names, parse_density_sampler
from .run.host_sync import to_device

UNIFORM = "uniform"
SCHEDULE_SAMPLERS = (UNIFORM, "loss-second-moment", "loss-weight", *density_sampler_names())


def check_schedule_sampler(name):
    if name not in SCHEDULE_SAMPLERS:
        raise ValueError(
            f"unknown --schedule_sampler {name!r}; expected one of: {', '.join(repr(n) for n in SCHEDULE_SAMPLERS)}"
        )
    return name


def create_named_schedule_sampler(name, diffusion):
    check_schedule_sampler(name)
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    if name == "loss-weight":
        return LossWeightSampler(diffusion)
    density, importance = parse_density_sampler(name)
    return NoiseLevelSampler(diffusion, name, density, importance)


class ScheduleSampler(ABC):
    """A distribution over timesteps; the loss is reweighted by 1/(T p(t)) to stay unbiased."""

    @abstractmethod
    def weights(self):
        """Unnormalised positive weights, one per timestep."""

    def sample(self, batch_size, device):
        """Timesteps and their importance weights, as tensors on `device`."""
        w = self.weights()
        p = w / np.sum(w)
        indices_np = np.random.choice(len(p), size=(batch_size,), p=p)
        # Non-blocking copies: a blocking one waits for the GPU to finish the previous step.
        indices = to_device(th.from_numpy(indices_np).long(), th.device(device))
        weights = to_device(th.from_numpy(1 / (len(p) * p[indices_np])).float(), th.device(device))
        return indices, weights

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        """Restore what state_dict() saved; a stateless sampler has nothing to restore."""


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion):
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self):
        return self._weights


class LossWeightSampler(ScheduleSampler):
    """p(t) proportional to the diffusion's loss weight w(t) (see the module docstring for why this is unbiased)."""

    def __init__(self, diffusion):
        weights = np.asarray(diffusion.mse_weights, dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(weights) & (weights > 0)))
        if bad.size:
            t = int(bad[0])
            name = getattr(getattr(diffusion, "loss_weighting", None), "name", "?")
            raise ValueError(
                f"--schedule_sampler loss-weight needs a positive finite loss weight at every timestep; "
                f"--weight_schedule {name} has w({t}) = {weights[t]:.3g}"
            )
        self._weights = weights

    def weights(self):
        return self._weights


class NoiseLevelSampler(ScheduleSampler):
    """t drawn from a noise-level density (noise_levels.py), p(t) proportional to p(lambda_t) |lambda_t - lambda_(t-1)|.

    With `importance` each draw carries 1/(T p(t)) and the objective stays uniform t's; without, it carries 1
    and the density is part of the objective (effective epsilon weight T p(t) w(t)), as EDM, EDM2 and SD3 train.
    """

    def __init__(self, diffusion, name, density, importance):
        self._weights = density.timestep_probabilities(diffusion.alphas_cumprod)
        self.importance = importance
        empty = np.flatnonzero(self._weights <= 0)
        if importance and empty.size:
            raise ValueError(
                f"--schedule_sampler {name}: p(t) underflows to 0 at timestep {int(empty[0])}, where its importance "
                "weight 1/(T p(t)) is infinite; use the density without -importance"
            )

    def weights(self):
        return self._weights

    def sample(self, batch_size, device):
        indices, weights = super().sample(batch_size, device)
        return indices, weights if self.importance else th.ones_like(weights)


class LossAwareSampler(ScheduleSampler):
    def update_with_local_losses(self, local_ts, local_losses):
        """Share this rank's (t, loss) pairs with every rank, then update; all ranks must call it."""
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            sizes = [th.zeros(1, dtype=th.long, device=local_ts.device) for _ in range(world)]
            dist.all_gather(sizes, th.tensor([len(local_ts)], dtype=th.long, device=local_ts.device))
            largest = int(max(s.item() for s in sizes))
            ts_batches = [th.zeros(largest, dtype=local_ts.dtype, device=local_ts.device) for _ in sizes]
            loss_batches = [th.zeros(largest, dtype=local_losses.dtype, device=local_losses.device) for _ in sizes]
            # all_gather needs equal shapes: pad, then cut each rank's part back to its size.
            pad = largest - len(local_ts)
            dist.all_gather(ts_batches, th.cat([local_ts, local_ts.new_zeros(pad)]))
            dist.all_gather(loss_batches, th.cat([local_losses, local_losses.new_zeros(pad)]))
            timesteps = [int(x) for b, s in zip(ts_batches, sizes) for x in b[: int(s.item())]]
            losses = [float(x) for b, s in zip(loss_batches, sizes) for x in b[: int(s.item())]]
        else:
            timesteps = [int(x) for x in local_ts]
            losses = [float(x) for x in local_losses]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, ts, losses):
        """Update from the losses of every rank."""


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over a history of recent losses (Nichol & Dhariwal 2021)."""

    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001):
        self.num_timesteps = diffusion.num_timesteps
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([self.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([self.num_timesteps], dtype=np.int64)

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self):
        return (self._loss_counts == self.history_per_term).all()

    def state_dict(self):
        return {"loss_history": self._loss_history.copy(), "loss_counts": self._loss_counts.copy()}

    def load_state_dict(self, state):
        history = np.asarray(state["loss_history"], dtype=np.float64)
        if history.shape != self._loss_history.shape:
            raise ValueError(
                f"schedule sampler state has shape {history.shape}, expected {self._loss_history.shape}"
            )
        self._loss_history = history.copy()
        self._loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()
