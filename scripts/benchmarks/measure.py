"""Timing, FLOP counting, MFU and peak memory, shared by gpu_benchmark.py and the ADM baseline.

It imports torch only, never our `guided_diffusion`: the ADM worker loads this file
beside ADM's own package of that name. Every number is taken the same way for both
codes: `warmup` calls first (compilation, cuDNN autotuning, allocator growth), then
the mean over `calls` calls between two device synchronisations.
"""

import json
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) tensor-core peaks in TFLOP/s, by a substring of the device name; float32
# runs cuDNN convolutions in TF32 by default, so its MFU is against the TF32 peak.
PEAK_TFLOPS = (
    ("H200", {"fp16": 989.4, "bf16": 989.4, "fp32": 494.7}),
    ("H100 PCIe", {"fp16": 756.5, "bf16": 756.5, "fp32": 378.0}),
    ("H100", {"fp16": 989.4, "bf16": 989.4, "fp32": 494.7}),
    ("A100", {"fp16": 312.0, "bf16": 312.0, "fp32": 156.0}),
)

RESULT_PREFIX = "RESULT "


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_tflops(device, precision, override=None):
    """The device's peak for `precision`, `override` when given, None when unknown (CPUs, other GPUs)."""
    if override:
        return float(override)
    name = device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if device.type == "cuda" and key in name:
            return peaks[precision]
    return None


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, calls, warmup, device):
    """Mean wall time of `fn()` over `calls` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def seconds_per_item(iterator, items, warmup, device):
    """Mean wall time per item of `iterator` (a sampling loop's steps) over `items`, after `warmup` items."""
    for _ in range(warmup):
        next(iterator)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(items):
        next(iterator)
    synchronize(device)
    return (time.perf_counter() - start) / items


class _ExplicitAttention(TorchFunctionMode):
    """Runs scaled_dot_product_attention as two batched matrix products and a softmax.

    Which fused attention kernels torch's flop counter knows changes between releases (2.14
    counts none of them on the CPU), while it has always counted bmm; the product shapes,
    and so the FLOPs, are those of the fused kernel.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _attention_by_products(*args, **kwargs)
        return func(*args, **kwargs)


def _attention_by_products(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    if attn_mask is not None or dropout_p or is_causal:
        raise ValueError("FLOP counting supports plain attention only (no mask, dropout or causality)")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    weights = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(weights, value)


def count_flops(fn):
    """FLOPs of the matrix products and convolutions `fn()` runs (forward and backward).

    torch.utils.flop_counter counts convolutions and matrix products; attention is run as
    explicit products so that the count is the same under every torch release.
    """
    counter = FlopCounterMode(display=False)
    with _ExplicitAttention(), counter:
        fn()
    return counter.get_total_flops()


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device):
    """Peak memory allocated by tensors since `reset_peak_memory`, or None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def training_row(label, batch, seconds, flops_per_step, peak, memory):
    """One training measurement: throughput, achieved TFLOP/s and MFU (None where the peak is unknown)."""
    achieved = flops_per_step / seconds / 1e12
    return dict(
        kind="train", label=label, batch=batch, step_ms=1e3 * seconds, images_per_s=batch / seconds,
        tflops=achieved, mfu=achieved / peak if peak else None, peak_gib=memory,
    )


def sampling_row(label, batch, seconds_per_step, steps, flops_per_step, memory):
    """One sampling measurement: a batch of `batch` images takes `steps` steps of `seconds_per_step`."""
    return dict(
        kind="sample", label=label, batch=batch, step_ms=1e3 * seconds_per_step, steps=steps,
        images_per_s=batch / (seconds_per_step * steps), tflops=flops_per_step / seconds_per_step / 1e12,
        peak_gib=memory,
    )


def emit(row):
    """A worker's result on stdout, for the parent to read back."""
    print(RESULT_PREFIX + json.dumps(row), flush=True)


def parse_emitted(stdout):
    return [json.loads(line[len(RESULT_PREFIX):]) for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]


def _cell(value, digits):
    return "—" if value is None else f"{value:.{digits}f}"


def format_rows(rows):
    """The benchmark table: training rows, then sampling rows."""
    lines = []
    train = [r for r in rows if r["kind"] == "train"]
    sample = [r for r in rows if r["kind"] == "sample"]
    if train:
        lines.append(f"{'training':34s} {'batch':>5s} {'images/s':>9s} {'step ms':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>8s}")
        for r in train:
            mfu = "—" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            lines.append(
                f"  {r['label']:32s} {r['batch']:5d} {r['images_per_s']:9.2f} {r['step_ms']:9.1f} {r['tflops']:8.2f} "
                f"{mfu:>6s} {_cell(r['peak_gib'], 2):>8s}"
            )
    if sample:
        lines.append(f"{'sampling':34s} {'batch':>5s} {'images/s':>9s} {'step ms':>9s} {'TFLOP/s':>8s} {'':>6s} {'peak GiB':>8s}")
        for r in sample:
            lines.append(
                f"  {r['label']:32s} {r['batch']:5d} {r['images_per_s']:9.3f} {r['step_ms']:9.1f} {r['tflops']:8.2f} "
                f"{'':>6s} {_cell(r['peak_gib'], 2):>8s}"
            )
    return "\n".join(lines)
