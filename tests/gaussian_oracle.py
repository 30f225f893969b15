"""Gaussian data, for which every quantity a diffusion sampler needs is known in closed form.

With x0 ~ N(m, S) and x_t = alpha x0 + sigma eps, x_t ~ N(alpha m, C) with
C = alpha^2 S + sigma^2 I, and the exact noise prediction is
E[eps | x_t] = sigma C^{-1} (x_t - alpha m). All C share the eigenvectors U of
S, and the probability-flow ODE moves each eigen-coordinate of x_t - alpha m
by the ratio of its standard deviations, so the exact ODE map from (alpha_T,
sigma_T) to (alpha_t, sigma_t) is x_t = alpha_t m + C_t^{1/2} C_T^{-1/2} (x_T - alpha_T m).
Used to test and benchmark the samplers against exact answers.
"""

import numpy as np
import torch

from guided_diffusion.targets import ModelMeanType, from_x0_and_eps, target_of_mean_type, to_x0


class GaussianData:
    """N(mean, covariance) over flattened samples; class-conditional when `mean` has one row per class."""

    def __init__(self, mean, covariance):
        self.means = np.atleast_2d(np.asarray(mean, dtype=np.float64))
        covariance = np.asarray(covariance, dtype=np.float64)
        dim = self.means.shape[1]
        if covariance.shape != (dim, dim) or not np.allclose(covariance, covariance.T):
            raise ValueError(f"covariance must be a symmetric {dim}x{dim} matrix, got shape {covariance.shape}")
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(covariance)
        if (self.eigenvalues <= 0).any():
            raise ValueError("covariance must be positive definite")
        self.covariance = covariance
        self.dim = dim

    def _mean_rows(self, batch, labels, like):
        means = torch.as_tensor(self.means, dtype=like.dtype, device=like.device)
        if labels is None:
            if len(self.means) != 1:
                raise ValueError("class-conditional Gaussian data needs labels")
            return means[0].expand(batch, -1)
        return means[labels.to(like.device).long()]

    def _to_eigenbasis(self, flat):
        basis = torch.as_tensor(self.eigenvectors, dtype=flat.dtype, device=flat.device)
        return flat @ basis, basis

    def eps_posterior_mean(self, x, alpha, sigma, labels=None):
        """E[eps | x_t = x]; `alpha`, `sigma` are scalars or one value per row."""
        flat = x.reshape(x.shape[0], -1)
        alpha, sigma = (torch.as_tensor(v, dtype=flat.dtype, device=flat.device).reshape(-1, 1) for v in (alpha, sigma))
        centred, basis = self._to_eigenbasis(flat - alpha * self._mean_rows(x.shape[0], labels, flat))
        eigenvalues = torch.as_tensor(self.eigenvalues, dtype=flat.dtype, device=flat.device)
        eps = sigma * (centred / (alpha**2 * eigenvalues + sigma**2)) @ basis.T
        return eps.reshape(x.shape)

    def ode_map(self, x_start, start, end, labels=None):
        """The exact probability-flow ODE solution at (alpha, sigma) = `end` from x_start at `start`."""
        (alpha_s, sigma_s), (alpha_e, sigma_e) = start, end
        flat = x_start.reshape(x_start.shape[0], -1)
        means = self._mean_rows(flat.shape[0], labels, flat)
        centred, basis = self._to_eigenbasis(flat - alpha_s * means)
        ratio = np.sqrt((alpha_e**2 * self.eigenvalues + sigma_e**2) / (alpha_s**2 * self.eigenvalues + sigma_s**2))
        moved = (centred * torch.as_tensor(ratio, dtype=flat.dtype, device=flat.device)) @ basis.T
        return (alpha_e * means + moved).reshape(x_start.shape)


class ExactGaussianModel(torch.nn.Module):
    """The Bayes-optimal ADM-style network for Gaussian data: forward(x, timesteps, y=None).

    `timesteps` are ADM's (float) step indices; alpha at a fractional index is
    interpolated linearly in log alpha, as the continuous-time view of the
    schedule does. Predicts eps, x0 or v per `model_mean_type`; with
    `learned_sigma` it appends C channels of junk where ADM puts the variance.
    """

    def __init__(self, data, alphas_cumprod, model_mean_type=ModelMeanType.EPSILON, learned_sigma=False):
        super().__init__()
        self.data = data
        self.log_alpha_by_index = 0.5 * np.log(np.asarray(alphas_cumprod, dtype=np.float64))
        self.model_mean_type = model_mean_type
        self.learned_sigma = learned_sigma
        # A parameter so that device and dtype can be read off the model like any network.
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, timesteps, y=None):
        indices = timesteps.detach().double().cpu().numpy()
        log_alpha = np.interp(indices, np.arange(len(self.log_alpha_by_index)), self.log_alpha_by_index)
        alpha = np.exp(log_alpha)
        sigma = np.sqrt(-np.expm1(2 * log_alpha))
        eps = self.data.eps_posterior_mean(x, alpha, sigma, labels=y)
        shape = (-1,) + (1,) * (x.ndim - 1)
        alpha_t = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(shape)
        sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(shape)
        x0 = to_x0("eps", eps, x, alpha_t, sigma_t)
        out = from_x0_and_eps(target_of_mean_type(self.model_mean_type), x0, eps, alpha_t, sigma_t)
        if self.learned_sigma:
            out = torch.cat([out, torch.full_like(out, 7.0)], dim=1)
        return out


class GivenStart:
    """A noise source (see guided_diffusion.noise) whose draw is a chosen x_T, to start a registered sampler there."""

    def __init__(self, x_T):
        self.x_T = x_T

    def randn_like(self, like):
        if like.shape != self.x_T.shape:
            raise ValueError(f"x_T has shape {tuple(self.x_T.shape)}, the sampler draws {tuple(like.shape)}")
        return self.x_T
