"""Counting host reads: the calls that make the CPU wait for the GPU when tensors live on CUDA.

On the CPU nothing waits, but the same calls are made, so counting them here bounds the syncs of a
CUDA step. Counted: Tensor.item, __bool__, __float__, __int__, __index__, tolist, cpu, numpy,
__array__, and a `.to` / `.cuda` / `.copy_` that names a device without non_blocking=True (a blocking
copy; on the CPU it names the CPU). Collectives are not torch functions and are counted apart.
"""

import collections
import os
import sys

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy", "__array__"}
COPIES = {"to", "cuda", "copy_"}


def _names_a_device(args, kwargs):
    if "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str)) or (isinstance(a, torch.Tensor) and i > 0)
               for i, a in enumerate(args) if not isinstance(a, torch.dtype))


class HostReads(TorchFunctionMode):
    """`with HostReads(exclude=tensors) as reads:` ... then `reads.total`, `reads.by_name` and `reads.by_place`.

    `exclude`: tensors whose reads are not syncs because they stay on the CPU on CUDA too (AdamW's
    `step` counters, which torch keeps on the CPU unless capturable or fused).
    """

    def __init__(self, exclude=()):
        super().__init__()
        self.excluded = {id(t) for t in exclude}
        self.by_name = collections.Counter()
        self.by_place = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if args and id(args[0]) in self.excluded:
            pass
        elif name in READS:
            self._count(name)
        elif name in COPIES and _names_a_device(args, kwargs) and not kwargs.get("non_blocking", False):
            self._count(f"blocking {name}")
        return func(*args, **kwargs)

    def _count(self, name):
        self.by_name[name] += 1
        frame = sys._getframe(2)
        while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is not None:
            self.by_place[f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {name}"] += 1

    @property
    def total(self):
        return sum(self.by_name.values())
