"""Which device a rank may use, checked before it joins the job, and the line each rank reports at start-up.

A node whose GPUs are missing (driver gone, CUDA_VISIBLE_DEVICES emptied) would
otherwise train on its CPU, or join a NCCL group with a gloo backend, and the
job would hang or crawl. A rank stops instead, with one line naming its host,
when `--device cuda` asks for a GPU or when SLURM allocated GPUs to the job.
"""

import socket

import torch

DEVICE_CHOICES = ("", "cuda", "cpu")

# What SLURM sets when it hands GPUs to a job or step (gres/gpu); the first set one wins.
_SLURM_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")


class DeviceError(ValueError):
    """The device asked for is not there."""


def check_device_flag(device):
    device = (device or "").strip().lower()
    if device not in DEVICE_CHOICES:
        raise ValueError(f"bad --device {device!r}: expected cuda, cpu, or nothing (cuda when available)")
    return device


def slurm_allocated_gpus(environ):
    """The GPUs SLURM allocated on this node, as SLURM wrote them ('0,1,2,3' or a count), or None."""
    for var in _SLURM_GPU_VARS:
        value = environ.get(var, "").strip()
        if value and value not in ("0", "(null)"):
            return f"{var}={value}"
    return None


def use_cuda(device, rank, environ, cuda_available=None):
    """Whether this rank runs on CUDA; raises DeviceError when a GPU is required and CUDA sees none."""
    device = check_device_flag(device)
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if device == "cpu":
        return False
    allocated = slurm_allocated_gpus(environ)
    if not available and (device == "cuda" or allocated):
        reason = "--device cuda" if device == "cuda" else f"SLURM allocated GPUs ({allocated})"
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
        raise DeviceError(
            f"host {socket.gethostname()} (rank {rank}): {reason} but CUDA sees no GPU here ({seen}); "
            "check this node's driver or exclude it (sbatch --exclude)"
        )
    return available


def describe(rank, world_size, local_rank, device, backend, launcher):
    """One line: where this rank runs and on what."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{device} {props.name} ({props.total_memory / 2**30:.1f} GiB)"
    else:
        what = "cpu"
    return (
        f"rank {rank}/{world_size} (local {local_rank}) on host {socket.gethostname()}: {what}, "
        f"backend {backend}, launcher {launcher}"
    )
