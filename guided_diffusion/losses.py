"""Closed-form Gaussian divergences and likelihoods used by the variational bound."""

import numpy as np
import torch as th


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats; broadcasts."""
    tensor = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, th.Tensor))
    logvar1, logvar2 = (
        x if isinstance(x, th.Tensor) else th.tensor(x, dtype=tensor.dtype, device=tensor.device)
        for x in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + th.exp(logvar1 - logvar2)
        + ((mean1 - mean2) ** 2) * th.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    # The tanh approximation of Page (1977) is what ADM's reported bits/dim use.
    return 0.5 * (1.0 + th.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * th.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood of 8-bit data x in [-1, 1] under a Gaussian discretised into 256 bins."""
    if x.shape != means.shape or x.shape != log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}")
    centered = x - means
    inv_stdv = th.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = th.where(
        x < -0.999,
        log_cdf_plus,
        th.where(x > 0.999, log_one_minus_cdf_min, th.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs
