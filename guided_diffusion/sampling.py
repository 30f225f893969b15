"""Sampling at scale: reproducible by index, spread over ranks, resumable, merged to ADM's npz.

Sample i of a run is a function of (seed, i) alone: its initial and per-step
noise come from `IndexedNoise(seed, [i])` and its class label (uniform) from a
generator seeded by (seed, i). Batches are cut on the grid [k B, (k + 1) B)
and rank r takes every world-th batch, so for a given --batch_size the npz is
the same bytes whatever the world size, and after any interruption. Another
--batch_size gives the same noise and labels; only the rounding of the batched
kernels changes (~1e-5), which moves a value to the next uint8 level about once
in a thousand.

Layout of `--out_dir`:

    run.json                        the flags that define the images (written on first use)
    batches/batch_{first}_{last}.npz  one file per finished batch: arr_0 (uint8 NHWC),
                                    indices, and labels for class-conditional models
    png/{index:06d}.png             with --png
    samples_{N}x{H}x{W}x3.npz       ADM's format: arr_0 (uint8 NHWC), arr_1 (labels, if any);
                                    one, for the latest --num_samples
    sampling.json                   flags, checkpoint sha256, seed, world size, timing

A re-run finds the sample indices that no batch file holds (whatever batch
size wrote the others) and samples only those, cut on its own grid.
"""

import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import re
import time
import zipfile

import blobfile as bf
import numpy as np
import torch as th
import torch.distributed as dist
from PIL import Image

from . import checkpoint, dist_util, fast_samplers
from .atomic import atomic_open, atomic_write_text
from .noise import IndexedNoise
from .noise_schedule import SKIP_TYPES
from .script_util import create_model_and_diffusion, model_and_diffusion_defaults
from .unipc import VARIANTS as UNIPC_VARIANTS

RUN_FILE = "run.json"
SUMMARY_FILE = "sampling.json"
BATCH_DIR = "batches"
PNG_DIR = "png"
BATCH_FILE_PATTERN = re.compile(r"^batch_(\d+)_(\d+)\.npz$")
SAMPLES_FILE_PATTERN = re.compile(r"^samples_\d+x\d+x\d+x3\.npz$")
PRECISIONS = ("fp32", "fp16", "bf16")
# The tables of a dataset config (--config) that sampling reads; [train] is for training.
CONFIG_SECTIONS = ("model", "diffusion", "sample")

# Flags of model_and_diffusion_defaults that only matter for training: they may
# differ between runs that share an --out_dir. use_fp16 is folded into precision.
TRAINING_ONLY_FLAGS = (
    "use_checkpoint",
    "dropout",
    "use_kl",
    "rescale_learned_sigmas",
    "weight_schedule",
    "weight_space",
    "p2_k",
    "p2_gamma",
    "min_snr_gamma",
    "use_fp16",
)

# Entropy words that keep the label stream apart from the noise stream of the same (seed, index).
_LABEL_STREAM = 0x6C6162656C

# Zip member timestamps are fixed so that equal samples give byte-equal npz files.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)

_POLL_SECONDS = 0.5


class OutDirError(OSError):
    """--out_dir cannot be created or written."""


class RunMismatchError(ValueError):
    """--out_dir already holds samples made with other image-defining flags."""


class NonFiniteSamplesError(ArithmeticError):
    """A batch came out NaN or infinite; written as images it would silently turn black."""


USER_ERRORS = (ValueError, FileNotFoundError, OutDirError, NonFiniteSamplesError)


# ---- samplers ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How to draw a batch; `options` are the flags the sampler reads (they define its images)."""

    run: object
    options: tuple = ()
    check: object = None


SAMPLERS = {}

# Defaults of every sampler's own flags; a flag set away from its default for a
# sampler that does not read it is an error, not silently ignored.
SAMPLER_OPTION_DEFAULTS = dict(eta=0.0)


def register_sampler(name, run, options=(), option_defaults=None, check=None):
    """Add a sampler for --sampler `name`.

    `run(model, diffusion, shape, *, model_kwargs, noise_source, device, flags)`
    returns a float batch in [-1, 1] (clipped later); `model` is a callable
    model(x, timesteps, **model_kwargs) and every random draw must come from
    `noise_source.randn_like`. `options` names the flags it reads; new ones get
    their defaults from `option_defaults`. `check(flags)` raises ValueError for
    flags the sampler cannot use, before any work is done.
    """
    for key, value in (option_defaults or {}).items():
        if SAMPLER_OPTION_DEFAULTS.get(key, value) != value:
            raise ValueError(f"sampler {name!r} gives flag {key} default {value!r}, others {SAMPLER_OPTION_DEFAULTS[key]!r}")
        SAMPLER_OPTION_DEFAULTS[key] = value
    unknown = [o for o in options if o not in SAMPLER_OPTION_DEFAULTS and o != "clip_denoised"]
    if unknown:
        raise ValueError(f"sampler {name!r} reads flag(s) without a default: {', '.join(unknown)}")
    SAMPLERS[name] = Sampler(run=run, options=tuple(options), check=check)


def _ddpm(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
    return diffusion.p_sample_loop(
        model,
        shape,
        clip_denoised=flags["clip_denoised"],
        model_kwargs=model_kwargs,
        device=device,
        noise_source=noise_source,
    )


def _ddim(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
    return diffusion.ddim_sample_loop(
        model,
        shape,
        clip_denoised=flags["clip_denoised"],
        model_kwargs=model_kwargs,
        device=device,
        eta=flags["eta"],
        noise_source=noise_source,
    )


def _fast_sampler(name):
    def run(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
        return fast_samplers.fast_sample(
            name,
            model,
            diffusion,
            shape,
            steps=flags["sampling_steps"],
            order=flags["solver_order"],
            skip_type=flags["skip_type"],
            variant=flags["unipc_variant"],
            model_kwargs=model_kwargs,
            noise_source=noise_source,
            device=device,
        )

    return run


def _check_fast_sampler(flags):
    name = flags["sampler"]
    if flags["timestep_respacing"]:
        raise ValueError(f"--sampler {name} takes its steps from --sampling_steps; leave --timestep_respacing empty")
    if flags["sampling_steps"] < 1:
        raise ValueError(f"--sampling_steps must be at least 1, got {flags['sampling_steps']}")
    if flags["solver_order"] not in (1, 2, 3):
        raise ValueError(f"--solver_order must be 1, 2 or 3, got {flags['solver_order']}")
    if flags["skip_type"] not in SKIP_TYPES:
        raise ValueError(f"unknown --skip_type {flags['skip_type']!r}; expected one of {', '.join(SKIP_TYPES)}")
    if name == "unipc" and flags["unipc_variant"] not in UNIPC_VARIANTS:
        raise ValueError(f"unknown --unipc_variant {flags['unipc_variant']!r}; expected one of {', '.join(UNIPC_VARIANTS)}")


register_sampler("ddpm", _ddpm, options=("clip_denoised",))
register_sampler("ddim", _ddim, options=("clip_denoised", "eta"))
_FAST_OPTION_DEFAULTS = dict(sampling_steps=20, solver_order=3, skip_type="logSNR", unipc_variant="bh2")
register_sampler(
    "dpm_solver",
    _fast_sampler("dpm_solver"),
    options=("sampling_steps", "solver_order", "skip_type"),
    option_defaults=_FAST_OPTION_DEFAULTS,
    check=_check_fast_sampler,
)
register_sampler(
    "unipc",
    _fast_sampler("unipc"),
    options=("sampling_steps", "solver_order", "skip_type", "unipc_variant"),
    option_defaults=_FAST_OPTION_DEFAULTS,
    check=_check_fast_sampler,
)


# ---- flags ---------------------------------------------------------------------------------------


def sampling_defaults():
    """The sampling script's own flags (ADM's plus ours), without the model/diffusion flags."""
    return dict(
        model_path="",
        num_samples=10000,
        batch_size=16,
        clip_denoised=True,
        use_ddim=False,
        sampler="ddpm",
        seed=0,
        class_labels="uniform",
        out_dir="",
        png=False,
        precision="fp32",
        **SAMPLER_OPTION_DEFAULTS,
    )


def flag_defaults():
    """Every flag of scripts/image_sample.py with its default."""
    defaults = model_and_diffusion_defaults()
    defaults.update(sampling_defaults())
    return defaults


def resolve_sampler(flags):
    """--sampler, with ADM's --use_ddim True read as --sampler ddim."""
    sampler = flags["sampler"]
    if flags["use_ddim"]:
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"--use_ddim True conflicts with --sampler {sampler}; drop --use_ddim")
        sampler = "ddim"
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown --sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    return sampler


def resolve_precision(flags):
    """--precision, with ADM's --use_fp16 True read as fp16."""
    precision = flags["precision"]
    if precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if flags["use_fp16"]:
        if precision == "bf16":
            raise ValueError("--use_fp16 True conflicts with --precision bf16; drop one")
        precision = "fp16"
    return precision


def parse_class_labels(value, num_classes):
    """'uniform', 'balanced' or a class index of a class-conditional model."""
    value = str(value).strip()
    if value in ("uniform", "balanced"):
        return value
    try:
        label = int(value)
    except ValueError:
        raise ValueError(f"bad --class_labels {value!r}: expected uniform, balanced or a class index") from None
    if not 0 <= label < num_classes:
        raise ValueError(f"--class_labels {label} is not a class of --num_classes {num_classes}")
    return str(label)


def validate_flags(flags):
    """Check and normalise the flags; returns a new dict with `sampler` and `precision` resolved."""
    defaults = flag_defaults()
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ValueError(f"unknown sampling flag(s): {', '.join(unknown)}")
    flags = {**defaults, **flags}
    if not flags["model_path"]:
        raise ValueError("--model_path is required")
    if not flags["out_dir"]:
        raise ValueError("--out_dir is required")
    if "://" in str(flags["out_dir"]):
        raise ValueError(f"--out_dir {flags['out_dir']}: must be a local or shared filesystem path")
    if flags["num_samples"] < 1:
        raise ValueError(f"--num_samples must be at least 1, got {flags['num_samples']}")
    if flags["batch_size"] < 1:
        raise ValueError(f"--batch_size must be at least 1, got {flags['batch_size']}")
    if flags["seed"] < 0:
        raise ValueError(f"--seed must be non-negative, got {flags['seed']}")
    flags["sampler"] = resolve_sampler(flags)
    flags["use_ddim"] = flags["sampler"] == "ddim"
    flags["precision"] = resolve_precision(flags)
    flags["use_fp16"] = False
    if flags["class_cond"]:
        flags["class_labels"] = parse_class_labels(flags["class_labels"], flags["num_classes"])
    elif flags["class_labels"] != "uniform":
        raise ValueError(f"--class_labels {flags['class_labels']} needs a class-conditional model (--class_cond True)")
    sampler = SAMPLERS[flags["sampler"]]
    for option, default in SAMPLER_OPTION_DEFAULTS.items():
        if option not in sampler.options and flags[option] != default:
            raise ValueError(f"--{option} does not apply to --sampler {flags['sampler']}")
    if sampler.check is not None:
        sampler.check(flags)
    return flags


def image_defining_flags(flags, checkpoint_sha256):
    """What determines sample i: checkpoint content, model/diffusion flags, sampler, seed, labels, precision.

    Not included: num_samples (sample i does not depend on it, so a run may be
    grown), batch_size and world size (by construction), model_path (the
    content hash is compared instead), out_dir and png.
    """
    identity = {k: flags[k] for k in model_and_diffusion_defaults() if k not in TRAINING_ONLY_FLAGS}
    identity["checkpoint_sha256"] = checkpoint_sha256
    identity["sampler"] = flags["sampler"]
    identity.update({option: flags[option] for option in SAMPLERS[flags["sampler"]].options})
    identity["seed"] = flags["seed"]
    identity["precision"] = flags["precision"]
    if flags["class_cond"]:
        identity["class_labels"] = flags["class_labels"]
    return identity


# ---- labels and batches --------------------------------------------------------------------------


def class_labels_for(indices, mode, seed, num_classes):
    """Labels of sample `indices`: uniform draws seeded by (seed, i), i % num_classes, or one class."""
    indices = np.asarray(indices, dtype=np.int64)
    if mode == "uniform":
        return np.array(
            [np.random.default_rng([_LABEL_STREAM, seed, int(i)]).integers(num_classes) for i in indices],
            dtype=np.int64,
        )
    if mode == "balanced":
        return indices % num_classes
    return np.full(len(indices), int(mode), dtype=np.int64)


def plan_batches(num_samples, batch_size, done_ranges):
    """Inclusive (first, last) index ranges still to sample, at most `batch_size` long.

    Batches are cut on the grid [k B, (k + 1) B) and then around what
    `done_ranges` (inclusive ranges already on disk) hold.
    """
    done = np.zeros(num_samples, dtype=bool)
    for first, last in done_ranges:
        if first < num_samples:
            done[first : min(last, num_samples - 1) + 1] = True
    batches = []
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        missing = np.flatnonzero(~done[start:stop]) + start
        if len(missing) == 0:
            continue
        breaks = np.flatnonzero(np.diff(missing) != 1) + 1
        for run in np.split(missing, breaks):
            batches.append((int(run[0]), int(run[-1])))
    return batches


def batch_file_name(first, last):
    return f"batch_{first:07d}_{last:07d}.npz"


def scan_batch_files(batch_dir):
    """Sorted [(first, last, path)] of the finished batch files in `batch_dir`."""
    found = []
    if not os.path.isdir(batch_dir):
        return found
    for name in os.listdir(batch_dir):
        match = BATCH_FILE_PATTERN.match(name)
        if match:
            first, last = int(match.group(1)), int(match.group(2))
            if first <= last:
                found.append((first, last, os.path.join(batch_dir, name)))
    found.sort()
    return found


def to_uint8_nhwc(batch):
    """ADM's conversion of [-1, 1] samples to bytes: scale to [0, 255], clamp, truncate."""
    return ((batch + 1) * 127.5).clamp(0, 255).to(th.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def write_batch_file(batch_dir, first, images, labels=None):
    last = first + len(images) - 1
    arrays = dict(arr_0=images, indices=np.arange(first, last + 1, dtype=np.int64))
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    path = os.path.join(batch_dir, batch_file_name(first, last))
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def write_pngs(png_dir, images, indices, skip_existing=False):
    for image, index in zip(images, indices):
        path = os.path.join(png_dir, f"{int(index):06d}.png")
        if skip_existing and os.path.exists(path):
            continue
        with atomic_open(path, "wb") as f:
            Image.fromarray(image).save(f, format="PNG")


# ---- merge ---------------------------------------------------------------------------------------


def _read_batch(path, first, last):
    with np.load(path) as data:
        images = data["arr_0"]
        indices = data["indices"]
        labels = data["labels"] if "labels" in data.files else None
    if not np.array_equal(indices, np.arange(first, last + 1)) or len(images) != len(indices):
        raise ValueError(f"{path}: holds indices that do not match its name {first}..{last}")
    return images, labels


def iter_samples_in_order(batch_dir, num_samples):
    """Yield (first, images, labels) covering indices 0..num_samples-1 exactly once, in order, one batch file at a time."""
    files = scan_batch_files(batch_dir)
    position = 0
    cursor = 0
    while position < num_samples:
        while cursor < len(files) and files[cursor][1] < position:
            cursor += 1
        if cursor == len(files) or files[cursor][0] > position:
            raise ValueError(f"{batch_dir}: no batch file holds sample index {position}")
        first, last, path = files[cursor]
        images, labels = _read_batch(path, first, last)
        stop = min(last, num_samples - 1) + 1
        rows = slice(position - first, stop - first)
        yield position, images[rows], (None if labels is None else labels[rows])
        position = stop


def _npy_member(zf, name, shape, dtype):
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    member = zf.open(info, "w", force_zip64=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(member, header)
    return member


def merge_batches(batch_dir, num_samples, out_path):
    """Stream the batch files into ADM's npz at `out_path`: arr_0 uint8 NHWC, arr_1 labels if the batches have them.

    Only one batch is in memory at a time; the file appears atomically. Returns
    the shape of arr_0.
    """
    samples = iter_samples_in_order(batch_dir, num_samples)
    head = next(samples)
    shape = (num_samples,) + head[1].shape[1:]
    has_labels = head[2] is not None
    labels = np.zeros(num_samples, dtype=np.int64) if has_labels else None
    with atomic_open(out_path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with _npy_member(zf, "arr_0.npy", shape, np.uint8) as member:
            for first, images, batch_labels in itertools.chain([head], samples):
                if images.shape[1:] != shape[1:] or images.dtype != np.uint8:
                    raise ValueError(f"{batch_dir}: batch at index {first} has images {images.dtype}{images.shape[1:]}, "
                                     f"others uint8{shape[1:]}")
                if (batch_labels is not None) != has_labels:
                    raise ValueError(f"{batch_dir}: some batch files have labels and others not")
                member.write(np.ascontiguousarray(images).data)
                if has_labels:
                    labels[first : first + len(images)] = batch_labels
        if has_labels:
            with _npy_member(zf, "arr_1.npy", labels.shape, labels.dtype) as member:
                member.write(labels.data)
    return shape


def samples_file_name(shape):
    return "samples_" + "x".join(str(n) for n in shape) + ".npz"


# ---- run directory -------------------------------------------------------------------------------


def file_sha256(path):
    digest = hashlib.sha256()
    with bf.BlobFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def claim_out_dir(out_dir, identity):
    """Record `identity` in out_dir/run.json, or check it equals the one there."""
    path = os.path.join(out_dir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)["image_flags"]
        differing = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        if differing:
            details = ", ".join(f"{k} (run: {recorded.get(k)!r}, now: {identity.get(k)!r})" for k in differing)
            raise RunMismatchError(
                f"--out_dir {out_dir} holds samples made with other flags: {details}; "
                "use a new --out_dir or the same flags"
            )
        return
    record = dict(image_flags=identity, created=datetime.datetime.now(datetime.timezone.utc).isoformat())
    try:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise OutDirError(f"--out_dir {out_dir}: cannot write {RUN_FILE} ({e.strerror or e})") from None


def make_out_dir(out_dir):
    try:
        os.makedirs(os.path.join(out_dir, BATCH_DIR), exist_ok=True)
    except OSError as e:
        raise OutDirError(f"--out_dir {out_dir}: cannot create it ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK):
        raise OutDirError(f"--out_dir {out_dir}: not writable")


def _main_then_share(fn):
    """Run `fn` on rank 0 and give every rank its result, or raise its user error on every rank.

    Errors must reach every rank: one rank failing alone would leave the
    others waiting forever in the next collective.
    """
    result = None
    if dist_util.is_main():
        try:
            result = {"value": fn()}
        except USER_ERRORS as e:
            result = {"error": type(e).__name__, "message": str(e)}
    result = dist_util.broadcast_object(result)
    if "error" in result:
        error_class = {cls.__name__: cls for cls in (ValueError, FileNotFoundError, OutDirError, RunMismatchError)}
        raise error_class.get(result["error"], ValueError)(result["message"])
    return result["value"]


# ---- model ---------------------------------------------------------------------------------------


def load_model_and_diffusion(flags, device):
    """The model (eval mode, on `device`, fp16 torso for fp16 on CUDA) and the sampling diffusion."""
    model_flags = {k: flags[k] for k in model_and_diffusion_defaults()}
    fp16_torso = flags["precision"] == "fp16" and device.type == "cuda"
    model_flags["use_fp16"] = fp16_torso
    model, diffusion = create_model_and_diffusion(**model_flags)
    checkpoint.load_model_checkpoint(model, flags["model_path"])
    model.to(device)
    if fp16_torso:
        model.convert_to_fp16()
    model.eval()
    return model, diffusion


def precision_model(model, precision, device):
    """model(x, t, **kw) under the autocast that --precision asks for, returning float32."""
    if precision == "fp32" or (precision == "fp16" and device.type == "cuda"):
        return model
    dtype = th.bfloat16 if precision == "bf16" else th.float16

    def forward(x, timesteps, **kwargs):
        with th.autocast(device_type=device.type, dtype=dtype):
            return model(x, timesteps, **kwargs).float()

    return forward


# ---- the run -------------------------------------------------------------------------------------


class _Progress:
    """Rank 0's bar over all ranks: counts this run's planned batch files as they appear."""

    def __init__(self, enabled, total, done_before, batch_dir, planned):
        self.batch_dir = batch_dir
        self.pending = list(planned)
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done_before, unit="img", desc="sampling", dynamic_ncols=True)

    def refresh(self):
        still = []
        for first, last in self.pending:
            if os.path.exists(os.path.join(self.batch_dir, batch_file_name(first, last))):
                if self.bar is not None:
                    self.bar.update(last - first + 1)
            else:
                still.append((first, last))
        self.pending = still

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _wait_for_all_ranks(progress):
    """Barrier; rank 0 keeps its bar moving while the other ranks finish."""
    if dist_util.get_world_size() == 1 or not dist.is_initialized():
        return
    if not dist_util.is_main():
        dist_util.barrier()
        return
    work = dist.barrier(async_op=True)
    while not work.is_completed():
        progress.refresh()
        time.sleep(_POLL_SECONDS)
    work.wait()


def sample_to_dir(flags, progress=True):
    """Sample `flags["num_samples"]` images into `flags["out_dir"]` on every rank of the job; see the module docstring.

    Call on every rank (after dist_util.setup_dist() for several). Returns, on
    every rank, a dict with `npz` (the merged file's path, set on rank 0 only),
    `images_sampled` (by all ranks in this call) and `seconds`.
    """
    flags = validate_flags(flags)
    out_dir = flags["out_dir"]
    batch_dir = os.path.join(out_dir, BATCH_DIR)
    world_size, rank = dist_util.get_world_size(), dist_util.get_rank()
    device = dist_util.dev()

    def check_paths():
        if not bf.exists(flags["model_path"]):
            raise FileNotFoundError(f"--model_path {flags['model_path']}: no such file")
        make_out_dir(out_dir)

    _main_then_share(check_paths)
    model, diffusion = load_model_and_diffusion(flags, device)

    def claim_and_scan():
        sha256 = file_sha256(flags["model_path"])
        claim_out_dir(out_dir, image_defining_flags(flags, sha256))
        return dict(sha256=sha256, done=[[first, last] for first, last, _ in scan_batch_files(batch_dir)])

    state = _main_then_share(claim_and_scan)
    planned = plan_batches(flags["num_samples"], flags["batch_size"], state["done"])
    mine = planned[rank::world_size]
    images_planned = sum(last - first + 1 for first, last in planned)

    shape_tail = (3, flags["image_size"], flags["image_size"])
    model_fn = precision_model(model, flags["precision"], device)
    run = SAMPLERS[flags["sampler"]].run
    if flags["png"]:
        os.makedirs(os.path.join(out_dir, PNG_DIR), exist_ok=True)

    bar = _Progress(
        progress and dist_util.is_main(),
        flags["num_samples"],
        flags["num_samples"] - images_planned,
        batch_dir,
        planned,
    )
    start = time.time()
    for first, last in mine:
        indices = list(range(first, last + 1))
        model_kwargs = {}
        labels = None
        if flags["class_cond"]:
            labels = class_labels_for(indices, flags["class_labels"], flags["seed"], flags["num_classes"])
            model_kwargs["y"] = th.from_numpy(labels).to(device)
        batch = run(
            model_fn,
            diffusion,
            (len(indices),) + shape_tail,
            model_kwargs=model_kwargs,
            noise_source=IndexedNoise(flags["seed"], indices),
            device=device,
            flags=flags,
        )
        finite = th.isfinite(batch).flatten(1).all(dim=1).cpu()
        if not bool(finite.all()):
            bad = [index for index, ok in zip(indices, finite.tolist()) if not ok]
            raise NonFiniteSamplesError(
                f"sample(s) {', '.join(map(str, bad[:10]))} came out NaN or infinite with --sampler {flags['sampler']} "
                f"--precision {flags['precision']}; nothing was written for indices {first}..{last}"
            )
        images = to_uint8_nhwc(batch)
        if flags["png"]:
            write_pngs(os.path.join(out_dir, PNG_DIR), images, indices)
        write_batch_file(batch_dir, first, images, labels)
        if dist_util.is_main():
            bar.refresh()
    _wait_for_all_ranks(bar)
    bar.refresh()
    bar.close()
    sample_seconds = time.time() - start

    result = dict(npz=None, images_sampled=images_planned, seconds=sample_seconds)
    if dist_util.is_main():
        result["npz"] = finish(flags, state["sha256"], world_size, images_planned, sample_seconds)
    return result


def applicable_flags(flags):
    """The flags without the options of samplers other than the one used (all at their defaults)."""
    used = SAMPLERS[flags["sampler"]].options
    return {k: v for k, v in flags.items() if k not in SAMPLER_OPTION_DEFAULTS or k in used}


def remove_other_merges(out_dir, keep_path):
    """Drop merged npz files of an earlier --num_samples: one run directory holds one merged result."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if SAMPLES_FILE_PATTERN.match(name) and not os.path.samefile(path, keep_path):
            os.unlink(path)


def finish(flags, checkpoint_sha256, world_size, images_sampled, sample_seconds):
    """Rank 0, after every index is on disk: merge to ADM's npz, fill PNGs, write sampling.json."""
    out_dir = flags["out_dir"]
    batch_dir = os.path.join(out_dir, BATCH_DIR)
    num_samples = flags["num_samples"]
    shape = (num_samples, flags["image_size"], flags["image_size"], 3)
    npz_path = os.path.join(out_dir, samples_file_name(shape))
    merge_start = time.time()
    if not os.path.exists(npz_path):
        merge_batches(batch_dir, num_samples, npz_path)
        remove_other_merges(out_dir, npz_path)
    merge_seconds = time.time() - merge_start
    if flags["png"]:
        png_dir = os.path.join(out_dir, PNG_DIR)
        for first, images, _ in iter_samples_in_order(batch_dir, num_samples):
            write_pngs(png_dir, images, range(first, first + len(images)), skip_existing=True)
    summary = dict(
        flags=applicable_flags(flags),
        model_path=flags["model_path"],
        checkpoint_sha256=checkpoint_sha256,
        seed=flags["seed"],
        num_samples=num_samples,
        sampler=flags["sampler"],
        timestep_respacing=flags["timestep_respacing"],
        image_flags=image_defining_flags(flags, checkpoint_sha256),
        npz=os.path.basename(npz_path),
        world_size=world_size,
        device=str(dist_util.dev()),
        torch_version=th.__version__,
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        timing=dict(
            images_sampled=images_sampled,
            sample_seconds=round(sample_seconds, 3),
            images_per_second=round(images_sampled / sample_seconds, 3) if images_sampled else None,
            merge_seconds=round(merge_seconds, 3),
        ),
    )
    atomic_write_text(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return npz_path
