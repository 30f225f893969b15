"""Opt-in speed-ups for training and sampling on GPUs, each behind its own flag, all off by default.

An ADM run's numerics are unchanged unless a flag asks otherwise:

- `--channels_last True`: convolution weights and inputs in NHWC layout (tensor cores
  prefer it). The same arithmetic in another order: outputs move by float rounding.
  Checkpoints are written in the default layout either way.
- `--compile True` (`--compile_mode default|reduce-overhead|max-autotune|...`):
  `torch.compile` of the UNet, in place, so state-dict keys stay ADM's. Fused kernels
  round differently from eager ones; `reduce-overhead` replays CUDA graphs.
- `--optimizer_impl default|foreach|fused`: AdamW's implementation (training). `default`
  is `torch.optim.AdamW` as ADM builds it; `foreach` and `fused` compute the same update
  with fewer kernels.
- `--cuda_graphs True` (sampling): the UNet's forward is captured once per input shape
  and replayed, which removes the launch overhead of a fixed-shape sampling loop.
- `--noise_threads N` (sampling, with `--noise_device cpu`): the per-sample CPU noise
  (`noise.IndexedNoise`) is drawn by N threads, one step ahead of the GPU, into pinned
  memory: the same numbers, no longer serial with the model. Noise drawn on the device
  (`noise.DeviceIndexedNoise`, the default on CUDA) has no host work to hide.
- `--batch_size auto` (sampling): the largest batch whose forward pass fits, found by
  doubling until CUDA runs out of memory and bisecting back (on the CPU: 16).

bf16 autocast is `--precision bf16` (`fp16_util`).
"""

import concurrent.futures
import dataclasses
import functools
import math

import numpy as np
import torch

from .. import dist_util
from ..fp16_util import autocast_model
from ..noise import IndexedNoise, noise_source

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZER_IMPLS = ("default", "foreach", "fused")
# torch.compile's backend; tests on CPU swap in "aot_eager", which skips the C++ code generation.
COMPILE_BACKEND = "inductor"

AUTO_BATCH_SIZE = "auto"
# Without CUDA there is no out-of-memory signal to probe for; ADM's sampling default.
CPU_AUTO_BATCH_SIZE = 16
# Sampling holds a few batch-sized tensors besides the forward pass the probe measures.
AUTO_BATCH_HEADROOM = 0.9
# Bisection stops when the bracket is this fraction of the batch that fits.
AUTO_BATCH_RESOLUTION = 1 / 16

FLAG_HELP = dict(
    channels_last="NHWC memory layout for the UNet's weights and activations (same maths, other rounding)",
    compile="torch.compile the UNet (first steps are slow while it compiles)",
    compile_mode=f"mode of torch.compile: {', '.join(COMPILE_MODES)}",
    optimizer_impl=f"AdamW implementation: {', '.join(OPTIMIZER_IMPLS)} (default: torch's choice, as ADM)",
    cuda_graphs="capture the UNet's forward as a CUDA graph per batch shape and replay it (CUDA only)",
    noise_threads="threads drawing the per-sample noise one step ahead of the model (same numbers; 0: inline)",
)


def shared_flag_defaults():
    return dict(channels_last=False, compile=False, compile_mode="default")


def training_flag_defaults():
    """The training script's fast-path flags."""
    return dict(shared_flag_defaults(), optimizer_impl="default")


def sampling_flag_defaults():
    """The sampling script's fast-path flags (`--batch_size auto` is the batch-size flag's own value)."""
    return dict(shared_flag_defaults(), cuda_graphs=False, noise_threads=0)


@dataclasses.dataclass(frozen=True)
class FastPathOptions:
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    optimizer_impl: str = "default"
    cuda_graphs: bool = False
    noise_threads: int = 0

    @classmethod
    def from_flags(cls, flags, device_type=None):
        """The options among `flags` (absent ones off), checked against the device when it is known."""
        names = [field.name for field in dataclasses.fields(cls)]
        options = cls(**{name: flags[name] for name in names if name in flags})
        options.check(device_type)
        return options

    def check(self, device_type=None):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown --compile_mode {self.compile_mode!r}; expected one of {', '.join(COMPILE_MODES)}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"--compile_mode {self.compile_mode} needs --compile True")
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise ValueError(
                f"unknown --optimizer_impl {self.optimizer_impl!r}; expected one of {', '.join(OPTIMIZER_IMPLS)}"
            )
        if self.noise_threads < 0:
            raise ValueError(f"--noise_threads must be 0 (draw inline) or positive, got {self.noise_threads}")
        if self.cuda_graphs and device_type not in (None, "cuda"):
            raise ValueError(f"--cuda_graphs True needs a CUDA device; this run is on {device_type}")
        if self.cuda_graphs and self.compile and self.compile_mode == "reduce-overhead":
            raise ValueError("--cuda_graphs True and --compile_mode reduce-overhead both capture CUDA graphs; give one")


# ---- the model ----------------------------------------------------------------------------------


def _inputs_to_channels_last(module, args):
    if args and torch.is_tensor(args[0]) and args[0].ndim == 4:
        return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
    return None


def use_channels_last(model):
    """Weights and the input batch in NHWC layout, in place; calling it twice changes nothing."""
    model.to(memory_format=torch.channels_last)
    if not getattr(model, "_channels_last_hook", None):
        model._channels_last_hook = model.register_forward_pre_hook(_inputs_to_channels_last)
    return model


def compile_in_place(module, mode="default"):
    """`torch.compile` the module's calls; its parameters, buffers and state-dict keys stay as they are."""
    if not hasattr(module, "compile"):
        raise ValueError(f"--compile True needs torch 2.2 or newer (in-place Module.compile); this is {torch.__version__}")
    if COMPILE_BACKEND == "inductor":
        module.compile(backend=COMPILE_BACKEND, mode=mode)
    else:
        module.compile(backend=COMPILE_BACKEND)
    return module


def prepare_training_model(model, options):
    """The layout change, before the optimizer and the EMAs copy the parameters."""
    if options.channels_last:
        use_channels_last(model)
    return model


def compile_training_model(module, options):
    """Compile what the loop calls (the DDP wrapper when there is one)."""
    if options.compile:
        compile_in_place(module, options.compile_mode)
    return module


def _align_state_layouts(optimizer):
    """After loading, give every state tensor its parameter's strides (checkpoints hold the default layout)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def make_adamw(params, lr, weight_decay, impl="default"):
    """AdamW as ADM builds it, or its foreach / fused implementation (the same update)."""
    params = list(params)
    choice = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    if impl not in choice:
        raise ValueError(f"unknown --optimizer_impl {impl!r}; expected one of {', '.join(OPTIMIZER_IMPLS)}")
    try:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **choice[impl])
    except RuntimeError as err:
        device = params[0].device.type if params else "?"
        raise ValueError(f"--optimizer_impl {impl} is not available for {device} parameters: {err}") from None
    if any(not p.is_contiguous() for p in params):
        optimizer.register_load_state_dict_post_hook(_align_state_layouts)
    return optimizer


# ---- sampling -----------------------------------------------------------------------------------


def _signature(x, timesteps, kwargs):
    return tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in [("x", x), ("t", timesteps)] + sorted(kwargs.items()))


class CudaGraphForward:
    """forward(x, t, **kwargs) replayed from a CUDA graph captured for the shapes of the last call.

    A new shape (the last, shorter batch of a rank) drops the old graph and captures
    anew, so at most one graph's memory is held. Outputs are copied out of the graph's
    buffer because multistep samplers keep earlier outputs.
    """

    WARMUP_CALLS = 2

    def __init__(self, forward):
        self.forward = forward
        self.key = None
        self.graph = None

    def __call__(self, x, timesteps, **kwargs):
        key = _signature(x, timesteps, kwargs)
        if key != self.key:
            self._capture(key, x, timesteps, kwargs)
        self.static_x.copy_(x)
        self.static_t.copy_(timesteps)
        for name, value in kwargs.items():
            self.static_kwargs[name].copy_(value)
        self.graph.replay()
        return self.static_out.clone()

    def _capture(self, key, x, timesteps, kwargs):
        self.key = self.graph = self.static_out = None
        self.static_x, self.static_t = x.clone(), timesteps.clone()
        self.static_kwargs = {name: value.clone() for name, value in kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self.forward(self.static_x, self.static_t, **self.static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self.static_out = self.forward(self.static_x, self.static_t, **self.static_kwargs)
        self.graph, self.key = graph, key


def _copy_output(forward):
    def copied(x, timesteps, **kwargs):
        return forward(x, timesteps, **kwargs).clone()

    return copied


def sampling_forward(model, precision, device, options):
    """The function the samplers call: `model` (eval mode) with the layout, compilation,
    autocast and CUDA graphs that `options` ask for."""
    if options.channels_last:
        use_channels_last(model)
    if options.compile:
        compile_in_place(model, options.compile_mode)
    forward = autocast_model(model, precision, device)
    if options.compile and options.compile_mode == "reduce-overhead":
        # Compile's CUDA graphs reuse their output buffers, and multistep samplers keep earlier outputs.
        forward = _copy_output(forward)
    if options.cuda_graphs:
        # Autocast caches casts of weights that require grad, which a graph must not hold on to.
        model.requires_grad_(False)
        forward = CudaGraphForward(forward)
    return forward


# ---- the largest batch that fits ----------------------------------------------------------------


def largest_fitting_batch(fits, limit, start=1):
    """The largest batch in [start, limit] for which `fits(batch)` holds, assuming it holds below any that does.

    Doubles from `start` until `fits` fails or `limit` is reached, then bisects between
    the last batch that fit and the first that did not, to AUTO_BATCH_RESOLUTION of it.
    """
    if limit < start:
        raise ValueError(f"batch limit {limit} is below the starting batch {start}")
    if not fits(start):
        raise ValueError(f"--batch_size auto: not even a batch of {start} fits on this device")
    good, bad = start, None
    while good < limit:
        trial = min(2 * good, limit)
        if not fits(trial):
            bad = trial
            break
        good = trial
    if bad is None:
        return good
    while bad - good > max(1, int(good * AUTO_BATCH_RESOLUTION)):
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def forward_fits(forward, batch, image_shape, num_classes, device):
    """Whether one no-grad forward pass at `batch` runs without CUDA running out of memory."""
    try:
        with torch.no_grad():
            x = torch.randn((batch,) + tuple(image_shape), device=device)
            t = torch.full((batch,), 1, device=device, dtype=torch.long)
            kwargs = {"y": torch.zeros(batch, device=device, dtype=torch.long)} if num_classes else {}
            forward(x, t, **kwargs)
            del x, t, kwargs
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()


def auto_batch_size(model, flags, device, limit):
    """`--batch_size auto`: the same batch on every rank, the smallest that the ranks' devices allow.

    The probe runs the model eagerly in the run's precision and layout (compiling every
    probed shape would take minutes) and keeps AUTO_BATCH_HEADROOM of what fit.
    """
    limit = max(1, int(limit))
    if device.type != "cuda":
        found = min(CPU_AUTO_BATCH_SIZE, limit)
    else:
        if flags.get("channels_last"):
            use_channels_last(model)
        forward = autocast_model(model, flags["precision"], device)
        shape = (3, flags["image_size"], flags["image_size"])
        num_classes = flags["num_classes"] if flags["class_cond"] else None
        fitted = largest_fitting_batch(lambda b: forward_fits(forward, b, shape, num_classes, device), limit)
        found = fitted if fitted == limit else max(1, int(fitted * AUTO_BATCH_HEADROOM))
    return min(dist_util.all_gather_object(found))


def parse_batch_size(value):
    """--batch_size: a positive integer, or "auto"."""
    if isinstance(value, str) and value.strip() == AUTO_BATCH_SIZE:
        return AUTO_BATCH_SIZE
    try:
        batch = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"bad --batch_size {value!r}: expected a positive integer or {AUTO_BATCH_SIZE}") from None
    if batch < 1:
        raise ValueError(f"--batch_size must be at least 1 (or {AUTO_BATCH_SIZE}), got {value}")
    return batch


def per_rank_limit(num_samples, world_size):
    """No rank needs a batch larger than its share of the samples."""
    return math.ceil(num_samples / world_size)


# ---- noise --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _noise_pool(threads):
    return concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="noise")


class PrefetchedIndexedNoise(IndexedNoise):
    """`IndexedNoise` with the same numbers, drawn by a pool of threads one call ahead.

    After each draw the next one of the same shape starts in the background (torch
    releases the GIL while drawing), so it overlaps the model's step. If the next
    request has another shape, the generators are rewound to where they stood and
    drawn afresh, so the sequence of draws stays that of `IndexedNoise`.
    """

    def __init__(self, seed, indices, threads, pin_memory=False):
        super().__init__(seed, indices)
        self.pool = _noise_pool(threads)
        self.chunks = [c for c in np.array_split(np.arange(len(self.generators)), threads) if len(c)]
        self.pin_memory = pin_memory
        self.ahead = None

    def _fill(self, out, rows):
        for row in rows:
            torch.randn(out.shape[1:], generator=self.generators[row], out=out[row])

    def _start(self, row_shape):
        out = torch.empty((len(self.generators),) + row_shape, pin_memory=self.pin_memory)
        return out, [self.pool.submit(self._fill, out, rows) for rows in self.chunks]

    @staticmethod
    def _finish(started):
        out, futures = started
        for future in futures:
            future.result()
        return out

    def randn_like(self, x):
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self.generators)} indices")
        row_shape = tuple(x.shape[1:])
        rows = None
        if self.ahead is not None:
            ahead_shape, states, started = self.ahead
            self.ahead = None
            drawn = self._finish(started)
            if ahead_shape == row_shape:
                rows = drawn
            else:
                for generator, state in zip(self.generators, states):
                    generator.set_state(state)
        if rows is None:
            rows = self._finish(self._start(row_shape))
        states = [generator.get_state() for generator in self.generators]
        self.ahead = (row_shape, states, self._start(row_shape))
        return rows.to(device=x.device, dtype=x.dtype, non_blocking=self.pin_memory)


def noise_source_factory(options, device, noise_device="cpu"):
    """(seed, indices) -> the noise source of one batch: `IndexedNoise` or its prefetched form for
    CPU noise, `DeviceIndexedNoise` for noise drawn on `device` (`noise.resolve_noise_device`)."""
    on_device = noise_device not in ("", "cpu") and device.type != "cpu"
    if on_device and options.noise_threads:
        raise ValueError("--noise_threads prefetches CPU noise; give --noise_device cpu with it, or drop it")
    if on_device:
        return lambda seed, indices: noise_source(seed, indices, noise_device, device)
    if not options.noise_threads:
        return IndexedNoise
    pin = device.type == "cuda"
    return lambda seed, indices: PrefetchedIndexedNoise(seed, indices, options.noise_threads, pin_memory=pin)
