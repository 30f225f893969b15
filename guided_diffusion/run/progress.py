"""What the training loop writes to its log: a step's loss terms, band errors and gradient norm, and the
line after each table of interval statistics."""

from .. import logger
from .host_sync import norm_from_square_sum


def log_step(loop, timesteps, mse, square_sum, terms):
    """A taken step's values for the next row (called by host_sync.DeferredLog at the logging step, on the host)."""
    loop._log_losses(timesteps, terms)
    loop.timestep_errors.log(timesteps, mse)
    logger.logkv_mean("grad_norm", norm_from_square_sum(square_sum))


def progress_line(step, last, row):
    """One line after each table, so that a stage's log ends with how far it is (the pipeline shows it)."""
    rate = row.get("steps_per_sec") or 0.0
    where = f"step {step}" if last is None else f"step {step}/{last} ({100 * step / last:.0f}%)"
    eta = f", about {(last - step) / rate / 60:.1f} min left" if last is not None and rate > 0 else ""
    loss = f", loss {row['loss']:.4g}" if "loss" in row else ""
    return f"training {where}, {rate:.2f} steps/s{loss}{eta}"
