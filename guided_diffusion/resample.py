"""Timestep samplers for training: uniform, or importance sampling by the loss's second moment."""

from abc import ABC, abstractmethod

import numpy as np
import torch as th
import torch.distributed as dist


def create_named_schedule_sampler(name, diffusion):
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"unknown --schedule_sampler {name!r}; expected 'uniform' or 'loss-second-moment'")


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
        indices = th.from_numpy(indices_np).long().to(device)
        weights = th.from_numpy(1 / (len(p) * p[indices_np])).float().to(device)
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
