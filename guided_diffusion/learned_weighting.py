"""EDM2's learned loss weighting (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", Sec. 5 and Appendix B.2; NVlabs/edm2 `EDM2Loss`), trained beside ADM's UNet.

EDM2's loss per sample is lambda(sigma) / exp(u(sigma)) * ||D - y||^2 + u(sigma), with lambda EDM's
weighting and u(sigma) a learned log-variance of the loss at noise level sigma: Fourier features of
c_noise = ln(sigma) / 4, then a linear layer. Minimising over u gives exp(u) = E[lambda ||D - y||^2], so
the network's loss is normalised to about 1 at every noise level. Here lambda is the diffusion's
`--weight_schedule edm2` weight, already on ADM's epsilon error (weighting.edm2), sigma = 1/sqrt(SNR_t),
and the effective epsilon weight of step t is w(t) / exp(u(t)).

Two choices differ from EDM2's code, both for a plain ADM optimizer: the linear layer is an ordinary one
started at zero (EDM2 normalises a random one, magnitude preserving), so training starts from EDM's
fixed weighting exactly; and it is trained by the run's AdamW, in a parameter group of its own with the
run's learning rate. Its state lives in its own file beside each checkpoint set
(`loss_weighting{step:06d}.pt`, named and hashed in the set's manifest), so the UNet's state dict stays
ADM's and loads strictly into ADM's UNet.
"""

import math

import blobfile as bf
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import dist_util, logger
from .run.checkpoint import CheckpointError, file_sha256
from .weighting import LEARNED_SCHEDULES, snr_from_alphas_cumprod

FILE_KEY = "loss_weighting"
FOURIER_CHANNELS = 128  # EDM2's logvar_channels
LOGGED_TIMESTEPS = 10  # u is logged at this many evenly spaced t


def loss_weighting_filename(step):
    return f"{FILE_KEY}{step:06d}.pt"


class LogVariance(nn.Module):
    """u(t): Fourier features of c_noise = ln(sigma_t) / 4 (fixed random frequencies and phases), then linear."""

    def __init__(self, alphas_cumprod, channels=FOURIER_CHANNELS, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        log_sigma = -0.5 * np.log(snr_from_alphas_cumprod(alphas_cumprod))
        self.register_buffer("c_noise", torch.tensor(log_sigma / 4.0, dtype=torch.float32))
        self.register_buffer("frequencies", 2 * math.pi * torch.randn(channels, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=generator))
        self.linear = nn.Linear(channels, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, t):
        angles = self.c_noise[t][:, None] * self.frequencies + self.phases
        return self.linear(math.sqrt(2.0) * torch.cos(angles))[:, 0]


def _mean_over_ranks(grad):
    """Its gradient averaged over ranks: the module is outside DistributedDataParallel."""
    if not (dist.is_available() and dist.is_initialized()):
        return grad
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


class LearnedWeighting:
    """The training loop's side of EDM2's weighting: the optimizer group, the loss, the file, the log."""

    def __init__(self, diffusion):
        self.num_timesteps = diffusion.num_timesteps
        self.module = LogVariance(diffusion.alphas_cumprod).to(dist_util.dev())
        for parameter in self.module.parameters():
            parameter.register_hook(_mean_over_ranks)

    def attach(self, opt, lr, weight_decay):
        opt.add_param_group({"params": list(self.module.parameters()), "lr": lr, "weight_decay": weight_decay})

    def reweigh(self, losses, t):
        """EDM2's loss: the weighted MSE term divided by exp(u(t)), plus u(t); a VB term stays as it is."""
        u = self.module(t)
        vb = losses.get("vb")
        weighted = losses["loss"] - vb if vb is not None else losses["loss"]
        loss = weighted.float() / torch.exp(u) + u
        return {**losses, "loss": loss + vb if vb is not None else loss}

    def zero_grad(self):
        for parameter in self.module.parameters():
            parameter.grad = None

    def curve(self):
        """u at every timestep, as a float64 array."""
        with torch.no_grad():
            t = torch.arange(self.num_timesteps, device=self.module.c_noise.device)
            return self.module(t).double().cpu().numpy()

    def log_curve(self):
        u = self.curve()
        for t in np.linspace(0, self.num_timesteps - 1, LOGGED_TIMESTEPS).round().astype(int):
            logger.logkv(f"u_t{t:04d}", float(u[t]))

    def checkpoint_states(self, step):
        return {FILE_KEY: (loss_weighting_filename(step), {k: v.detach().cpu() for k, v in self.module.state_dict().items()})}

    def load_beside(self, resume):
        """Restore the state saved with `resume`'s set (hash checked, keys strict); a set without one starts u at 0."""
        name = ((resume.manifest or {}).get("files") or {}).get(FILE_KEY)
        if name is None:
            logger.warn(f"no {FILE_KEY} file in the checkpoint set at step {resume.step}; the learned weighting starts at u = 0")
            return
        path = bf.join(bf.dirname(resume.model_path), name)
        if not bf.exists(path):
            raise CheckpointError(f"{path}: the learned weighting of the set at step {resume.step} is missing")
        recorded = (resume.manifest.get("sha256") or {}).get(name)
        if recorded is not None and file_sha256(path) != recorded:
            raise CheckpointError(f"{path} does not match the sha256 its manifest records: corrupt or replaced")
        state = torch.load(path, map_location=dist_util.dev(), weights_only=True)
        try:
            self.module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit the learned weighting: {str(e).splitlines()[0]}") from None


class FixedWeighting:
    """Every other weighting: nothing learned, nothing to attach, save or log."""

    def attach(self, opt, lr, weight_decay):
        pass

    def reweigh(self, losses, t):
        return losses

    def zero_grad(self):
        pass

    def log_curve(self):
        pass

    def checkpoint_states(self, step):
        return {}

    def load_beside(self, resume):
        pass


def for_training(diffusion, precision):
    """The weighting object of a run: LearnedWeighting for `--weight_schedule edm2`, FixedWeighting otherwise."""
    if diffusion.loss_weighting.name not in LEARNED_SCHEDULES:
        return FixedWeighting()
    if precision == "fp16":
        raise ValueError(
            f"--weight_schedule {diffusion.loss_weighting.name} learns its weighting in float32 outside the loss "
            "scaling of --precision fp16; use --precision fp32 or bf16"
        )
    return LearnedWeighting(diffusion)
