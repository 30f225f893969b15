"""Training-time errors per band of timesteps: the paper's Fig. 4 curve, live in the logs.

Whatever the network predicts and however the loss is weighted, each sample's
unweighted MSE in the target's own space is turned into the epsilon-space error
(`targets.eps_error_per_target_error`) and the x0-space error, which for an
epsilon error is that error divided by SNR(t) (Eq. 6). Both are averaged over
NUM_BINS equal bands of t and logged as `eps_mse_t{start}` and `x0_mse_t{start}`,
`start` being the band's first timestep (zero-padded, so the columns sort in t).
"""

import numpy as np

from .. import logger
from ..targets import eps_error_per_target_error, target_of_mean_type
from ..weighting import snr_from_alphas_cumprod

NUM_BINS = 10


def bin_starts(num_timesteps, num_bins=NUM_BINS):
    """The first timestep of each band: band k holds t with t * num_bins // num_timesteps == k."""
    num_bins = min(num_bins, num_timesteps)
    return [-(-k * num_timesteps // num_bins) for k in range(num_bins)]


class TimestepBinErrors:
    """Logs eps- and x0-space MSE per band of t for a diffusion's training losses (nothing for a VB-only loss)."""

    def __init__(self, diffusion, num_bins=NUM_BINS):
        self.num_timesteps = diffusion.num_timesteps
        self.num_bins = min(num_bins, self.num_timesteps)
        target = target_of_mean_type(diffusion.model_mean_type)
        snr = snr_from_alphas_cumprod(diffusion.alphas_cumprod)
        # No SNR identity for a posterior-mean model: nothing to convert.
        self.eps_per_target = None if target is None else eps_error_per_target_error(target, snr)
        self.snr = snr
        width = len(str(self.num_timesteps - 1))
        self.suffixes = [f"t{start:0{width}d}" for start in bin_starts(self.num_timesteps, self.num_bins)]

    def errors(self, timesteps, target_mse):
        """(bands, eps-space MSE, x0-space MSE) per sample, as numpy arrays."""
        t = np.asarray(timesteps, dtype=np.int64)
        eps_mse = np.asarray(target_mse, dtype=np.float64) * self.eps_per_target[t]
        return t * self.num_bins // self.num_timesteps, eps_mse, eps_mse / self.snr[t]

    def log(self, timesteps, target_mse):
        """`logger.logkv_mean` of every sample's errors under its band's keys; `target_mse` may be None."""
        if target_mse is None or self.eps_per_target is None:
            return
        bands, eps_mse, x0_mse = self.errors(timesteps.cpu().numpy(), target_mse.cpu().numpy())
        for band, eps_value, x0_value in zip(bands.tolist(), eps_mse.tolist(), x0_mse.tolist()):
            logger.logkv_mean(f"eps_mse_{self.suffixes[band]}", eps_value)
            logger.logkv_mean(f"x0_mse_{self.suffixes[band]}", x0_value)
