"""A training step that never waits for the GPU outside its logging steps, except for one decision.

Every read of a CUDA tensor on the host (`.item()`, `bool()`, `float()`, `.cpu()`, a blocking copy)
makes the CPU wait until the GPU has finished all queued work, so the CPU cannot queue the next
kernels meanwhile; at the paper's batch of 1 per GPU that idles the GPU between steps. A step makes
one such read: whether every rank's loss and gradient are finite and whether any rank was asked to
stop, agreed in one collective (`agree`). Values read only for logging (the loss terms, per-band
errors, the gradient norm) stay on the device until the logging step (`DeferredLog`), and copies
to the device are non-blocking (`to_device`).
"""

import math

import torch
import torch.distributed as dist

from .. import dist_util


def to_device(tensor, device):
    """`tensor` on `device`; from the CPU to CUDA through pinned memory, so that the copy does not block."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def agree(step_finite, stop_requested):
    """(every rank's step is finite, some rank was asked to stop): one collective and one host read.

    `step_finite` is a 0-d bool tensor on the device, `stop_requested` this rank's host flag.
    """
    # new_full fills on the device: a torch.tensor(..., device=cuda) would be a blocking copy.
    flags = torch.stack([step_finite.to(torch.int32), step_finite.new_full((), not stop_requested, dtype=torch.int32)])
    if dist_util.get_world_size() > 1:
        flags = flags.to(dist_util._comm_device(), non_blocking=True)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    finite, go_on = flags.tolist()
    return bool(finite), not go_on


def step_decision(mp_trainer, loss_finite, stop_signals):
    """(the gradients' sum of squares on the device, every rank's step finite, some rank asked to stop)."""
    square_sum = mp_trainer.grad_square_sum()
    finite, stop = agree(loss_finite & torch.isfinite(square_sum), getattr(stop_signals, "requested", False))
    return square_sum, finite, stop


class DeferredLog:
    """Per-step log calls whose tensor arguments are read at the logging step, all in one copy.

    `add(fn, *args)` keeps the call (an argument may be a tensor, a dict of tensors or anything else);
    `flush()` copies every kept tensor to the host at once and makes the calls in their order, with CPU
    tensors of the same dtypes: the logged numbers are those an immediate call would have logged.
    """

    def __init__(self):
        self.pending = []

    def add(self, fn, *args):
        self.pending.append((fn, args))

    def flush(self):
        if not self.pending:
            return
        kept = [t for _, args in self.pending for t in _tensors(args)]
        # float64 holds every float32 value and every integer below 2**53 exactly: one copy for all dtypes.
        host = torch.cat([t.detach().reshape(-1).double() for t in kept]).cpu() if kept else None
        offset, restored = 0, {}
        for tensor in kept:
            restored[id(tensor)] = host[offset : offset + tensor.numel()].reshape(tensor.shape).to(tensor.dtype)
            offset += tensor.numel()
        for fn, args in self.pending:
            fn(*[_restore(arg, restored) for arg in args])
        self.pending = []


def _tensors(args):
    for arg in args:
        if isinstance(arg, torch.Tensor):
            yield arg
        elif isinstance(arg, dict):
            yield from (v for v in arg.values() if isinstance(v, torch.Tensor))


def _restore(arg, restored):
    if isinstance(arg, torch.Tensor):
        return restored[id(arg)]
    if isinstance(arg, dict):
        return {k: restored[id(v)] if isinstance(v, torch.Tensor) else v for k, v in arg.items()}
    return arg


def norm_from_square_sum(square_sum):
    """The gradient norm as MixedPrecisionTrainer.grad_norm gives it, from its (host) sum of squares."""
    return math.sqrt(float(square_sum))
