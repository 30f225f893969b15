"""Sampling at scale: reproducible by index, spread over ranks, resumable, merged to ADM's npz.

Sample i of a run is a function of (seed, i) alone: its initial and per-step
noise come from `IndexedNoise(seed, [i])` (`--noise_device cpu`) or its twin
drawn on the GPU (`--noise_device device`, the default on CUDA: other numbers
than the CPU's, see `noise`), and its class label (uniform) from a
generator seeded by (seed, i). Batches are cut on the grid [k B, (k + 1) B)
and rank r takes every world-th batch, so for a given --batch_size the npz is
the same bytes whatever the world size, and after any interruption. Another
--batch_size gives the same noise and labels; only the rounding of the batched
kernels changes (~1e-5), which moves a value to the next uint8 level about once
in a thousand.

The layout of `--out_dir` is `sample_store`'s, plus `sampling.json`: the
flags, the checkpoint's sha256, world size, timing, and `run`, the fields that
identify the samples in the results registry (weighting, prediction target,
training iterations, sampler, steps), resolved here once so that evaluations
read them instead of re-deriving them.

A re-run finds the sample indices that no batch file holds (whatever batch
size wrote the others) and samples only those, cut on its own grid.

`--shard i --num_shards n` (a SLURM array task, say) takes only the grid
batches k with k % n == i, with no collective between shards; the shard
that finds every index on disk when it ends merges. Shards finishing
together may both merge: the merge is deterministic and lands by atomic
rename, so the npz has the same bytes either way, and the same bytes as
one job's.
"""

import contextlib
import datetime
import json
import os
import time

import blobfile as bf
import numpy as np
import torch as th
import torch.distributed as dist

from . import dist_util, noise, samplers, weighting
from .run import checkpoint, fast_paths, run_lock
from .run.atomic import atomic_write_text
from .run.checkpoint import file_sha256
from .fp16_util import fp16_fallback_note, resolve_precision
from .image_ops import to_uint8_nhwc
from .run.sample_store import (
    BATCH_DIR,
    PNG_DIR,
    OutDirError,
    RUN_FILE,
    RunMismatchError,
    batch_file_name,
    check_batch_identities,
    check_no_larger_merge,
    claim_out_dir,
    iter_samples_in_order,
    make_out_dir,
    merge_batches,
    plan_batches,
    remove_other_merges,
    remove_stale_temps_of_run,
    samples_file_name,
    scan_batch_files,
    shard_batches,
    shard_lock_name,
    write_batch_file,
    write_pngs,
)
from .script_util import check_model_and_diffusion_flags, load_model_for_sampling, model_and_diffusion_defaults
from .targets import target_from_flags

SUMMARY_FILE = "sampling.json"
# The tables of a dataset config (--config) that sampling reads; [train] is for training.
CONFIG_SECTIONS = ("model", "diffusion", "sample")


def training_only_flags():
    """Flags of model_and_diffusion_defaults that only matter for training: they may
    differ between runs that share an --out_dir. use_fp16 is folded into precision."""
    fixed = ("use_checkpoint", "dropout", "use_kl", "rescale_learned_sigmas", "weight_schedule", "weight_space", "use_fp16")
    return fixed + tuple(weighting.parameter_defaults())


# Entropy words that keep the label stream apart from the noise stream of the same (seed, index).
_LABEL_STREAM = 0x6C6162656C

_POLL_SECONDS = 0.5


class NonFiniteSamplesError(ArithmeticError):
    """A batch came out NaN or infinite; written as images it would silently turn black."""


USER_ERRORS = (ValueError, OSError, NonFiniteSamplesError)


# ---- flags ---------------------------------------------------------------------------------------


def sampling_defaults():
    """The sampling script's own flags (ADM's plus ours), without the model/diffusion flags."""
    return dict(
        model_path="",
        num_samples=10000,
        # A string so that the flag also takes "auto" (fast_paths.parse_batch_size).
        batch_size="16",
        clip_denoised=True,
        use_ddim=False,
        sampler="ddpm",
        seed=0,
        class_labels="uniform",
        out_dir="",
        sample_dir="",
        png=False,
        precision="",
        shard=0,
        num_shards=1,
        device="",
        noise_device="",
        allow_unhealthy=False,
        **dist_util.launch_flag_defaults(),
        **fast_paths.sampling_flag_defaults(),
        **samplers.SAMPLER_OPTION_DEFAULTS,
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
    return sampler


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


def output_dir(flags):
    """--out_dir, or P2's and the paper's --sample_dir, or $OPENAI_LOGDIR as for training (ADM's convention)."""
    out_dir, sample_dir = flags["out_dir"], flags["sample_dir"]
    if out_dir and sample_dir and os.path.normpath(out_dir) != os.path.normpath(sample_dir):
        raise ValueError(f"--out_dir {out_dir} and --sample_dir {sample_dir} name different folders; give one")
    resolved = out_dir or sample_dir or os.environ.get("OPENAI_LOGDIR", "")
    if not resolved:
        raise ValueError("--out_dir is required (or --sample_dir, or OPENAI_LOGDIR in the environment)")
    return resolved


def validate_flags(flags, device_type=None):
    """Check and normalise the flags; returns a new dict with `sampler` and `precision` resolved."""
    return prepare_run(flags, device_type)[0]


def prepare_run(flags, device_type=None):
    """(the checked, normalised flags, the sampler `Method` they ask for), each resolved once here."""
    defaults = flag_defaults()
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ValueError(f"unknown sampling flag(s): {', '.join(unknown)}")
    flags = {**defaults, **flags}
    if not flags["model_path"]:
        raise ValueError("--model_path is required")
    flags["out_dir"] = output_dir(flags)
    if "://" in str(flags["out_dir"]):
        raise ValueError(f"--out_dir {flags['out_dir']}: must be a local or shared filesystem path")
    if flags["num_samples"] < 1:
        raise ValueError(f"--num_samples must be at least 1, got {flags['num_samples']}")
    check_model_and_diffusion_flags(flags)
    flags["batch_size"] = fast_paths.parse_batch_size(flags["batch_size"])
    if flags["seed"] < 0:
        raise ValueError(f"--seed must be non-negative, got {flags['seed']}")
    if flags["num_shards"] < 1 or not 0 <= flags["shard"] < flags["num_shards"]:
        raise ValueError(f"--shard {flags['shard']} --num_shards {flags['num_shards']}: expected 0 <= shard < num_shards")
    if flags["num_shards"] > 1 and flags["batch_size"] == fast_paths.AUTO_BATCH_SIZE:
        # Shards split the batch grid between them; each must cut it the same way.
        raise ValueError("--batch_size auto cannot be used with --num_shards > 1: give every shard the same --batch_size")
    flags["sampler"] = resolve_sampler(flags)
    flags["use_ddim"] = flags["sampler"] == "ddim"
    flags["precision"] = resolve_precision(flags["precision"], flags["use_fp16"], device_type)
    flags["use_fp16"] = False
    if flags["class_cond"]:
        flags["class_labels"] = parse_class_labels(flags["class_labels"], flags["num_classes"])
    elif flags["class_labels"] != "uniform":
        raise ValueError(f"--class_labels {flags['class_labels']} needs a class-conditional model (--class_cond True)")
    method = samplers.resolve_method(flags)
    options = fast_paths.FastPathOptions.from_flags(flags, device_type)
    if options.noise_threads and not str(flags["noise_device"]).strip():
        # --noise_threads prefetches CPU noise, so asking for it (as configs/plans/gpu_mini.toml does) picks that noise.
        flags["noise_device"] = "cpu"
    flags["noise_device"] = noise.resolve_noise_device(flags["noise_device"], device_type)
    if flags["noise_device"] not in ("", "cpu") and options.noise_threads:
        raise ValueError("--noise_threads prefetches CPU noise; give --noise_device cpu with it, or drop it")
    return flags, method


def image_defining_flags(flags, checkpoint_sha256, method=None):
    """What determines sample i: checkpoint content, model/diffusion flags, sampler, seed, labels, precision.

    Not included: num_samples (sample i does not depend on it, so a run may be
    grown), batch_size and world size (by construction), model_path (the
    content hash is compared instead), out_dir and png.
    """
    training_only = training_only_flags()
    identity = {k: flags[k] for k in model_and_diffusion_defaults() if k not in training_only}
    identity["checkpoint_sha256"] = checkpoint_sha256
    identity["sampler"] = flags["sampler"]
    method = method or samplers.resolve_method(flags)
    identity.update({option: flags[option] for option in method.sampler.options})
    identity["seed"] = flags["seed"]
    identity["precision"] = flags["precision"]
    # CPU noise is what every run drew before the flag existed: leaving it out keeps their out_dirs valid.
    if flags.get("noise_device", "cpu") not in ("", "cpu"):
        identity["noise_device"] = flags["noise_device"]
    if flags["class_cond"]:
        identity["class_labels"] = flags["class_labels"]
    return identity


def sampling_steps(flags):
    """How many network evaluations the sampler makes per sample."""
    return samplers.resolve_method(flags).steps


def run_record(flags, checkpoint_sha256, method=None):
    """The fields that identify these samples in the results registry (null where unknown).

    The weighting and the iteration count come from the training manifest beside
    the checkpoint; without one, the iterations from an ADM file name.
    """
    manifest = checkpoint.manifest_beside(flags["model_path"])
    training_flags = (manifest or {}).get("flags") or {}
    iterations = manifest["step"] if manifest else checkpoint.step_of_checkpoint_file(flags["model_path"])
    return dict(
        weight_schedule=training_flags.get("weight_schedule"),
        pred=target_from_flags(flags["predict_xstart"], flags["predict_v"]),
        schedule_sampler=training_flags.get("schedule_sampler"),
        train_seed=training_flags.get("seed"),
        iterations=iterations,
        sampler=flags["sampler"],
        steps=(method or samplers.resolve_method(flags)).steps,
        checkpoint_hash=checkpoint_sha256,
    )


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


# ---- run directory -------------------------------------------------------------------------------


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


def load_model_and_diffusion(flags, device, method):
    """The model (eval mode, on `device`) and the process `method`'s sampler runs on."""
    model_flags = {k: flags[k] for k in model_and_diffusion_defaults()}
    model_flags["timestep_respacing"] = method.process_respacing
    return load_model_for_sampling(model_flags, flags["model_path"], device, flags["precision"])


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
    every rank, a dict with `npz` (the merged file's path, set on rank 0 only, and
    only once every index is on disk), `images_sampled` (by all ranks in this
    call), `seconds` and `images_missing` (indices other shards still owe).
    Rank 0 holds the out_dir's run lock meanwhile: one run writes an out_dir at a
    time, or, with --num_shards, one run per shard.
    """
    with contextlib.ExitStack() as held:
        return _sample_to_dir(flags, progress, held)


def _sample_to_dir(flags, progress, held):
    device = dist_util.dev()
    given = flags
    flags, method = prepare_run(flags, device.type)
    note = fp16_fallback_note(given.get("precision", ""), given.get("use_fp16", False), flags["precision"])
    if note and dist_util.is_main():
        print(note, flush=True)
    out_dir = flags["out_dir"]
    batch_dir = os.path.join(out_dir, BATCH_DIR)
    world_size, rank = dist_util.get_world_size(), dist_util.get_rank()
    reports = dist_util.all_gather_object(dist_util.device_report())
    if dist_util.is_main():
        print("\n".join(reports), flush=True)

    def check_paths():
        if not bf.exists(flags["model_path"]):
            raise FileNotFoundError(f"--model_path {flags['model_path']}: no such file")
        if bf.isdir(flags["model_path"]):
            raise ValueError(f"--model_path {flags['model_path']}: is a directory; expected a model file (model*.pt, ema_*.pt)")
        check_no_larger_merge(out_dir, flags["num_samples"])
        make_out_dir(out_dir)
        lock = held.enter_context(
            run_lock.hold(
                out_dir,
                "--out_dir" if flags["num_shards"] == 1 else f"--out_dir (shard {flags['shard']} of {flags['num_shards']})",
                clean=lambda directory: remove_stale_temps_of_run(
                    directory, flags["batch_size"], flags["shard"], flags["num_shards"]
                ),
                name=shard_lock_name(flags["shard"], flags["num_shards"]),
            )
        )
        for note in lock.notes if lock else []:
            print(note, flush=True)

    _main_then_share(check_paths)
    model, diffusion = load_model_and_diffusion(flags, device, method)

    def claim_and_scan():
        sha256 = file_sha256(flags["model_path"])
        identity = image_defining_flags(flags, sha256, method)
        claim_out_dir(out_dir, identity)
        unstamped = check_batch_identities(out_dir, identity)
        if unstamped:
            print(f"--out_dir {out_dir}: {unstamped} batch file(s) predate batch identities; kept, as {RUN_FILE} "
                  "matches this run", flush=True)
        return dict(sha256=sha256, done=[[first, last] for first, last, _ in scan_batch_files(batch_dir)])

    state = _main_then_share(claim_and_scan)
    if flags["batch_size"] == fast_paths.AUTO_BATCH_SIZE:
        flags["batch_size"] = fast_paths.auto_batch_size(
            model, flags, device, fast_paths.per_rank_limit(flags["num_samples"], world_size)
        )
        if dist_util.is_main():
            print(f"--batch_size auto: {flags['batch_size']} on {device}", flush=True)
    planned = shard_batches(
        plan_batches(flags["num_samples"], flags["batch_size"], state["done"]),
        flags["batch_size"],
        flags["shard"],
        flags["num_shards"],
    )
    mine = planned[rank::world_size]
    images_planned = sum(last - first + 1 for first, last in planned)

    shape_tail = (3, flags["image_size"], flags["image_size"])
    identity = image_defining_flags(flags, state["sha256"], method)
    options = fast_paths.FastPathOptions.from_flags(flags, device.type)
    model_fn = fast_paths.sampling_forward(model, flags["precision"], device, options)
    noise_for = fast_paths.noise_source_factory(options, device, flags["noise_device"])
    run = method.sampler.run
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
            noise_source=noise_for(flags["seed"], indices),
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
        write_batch_file(batch_dir, first, images, labels, identity=identity)
        if dist_util.is_main():
            bar.refresh()
    _wait_for_all_ranks(bar)
    bar.refresh()
    bar.close()
    sample_seconds = time.time() - start

    result = dict(npz=None, images_sampled=images_planned, seconds=sample_seconds, images_missing=0)
    if dist_util.is_main():
        if flags["num_shards"] > 1:
            done = [(first, last) for first, last, _ in scan_batch_files(batch_dir)]
            result["images_missing"] = sum(last - first + 1 for first, last in plan_batches(flags["num_samples"], flags["batch_size"], done))
        if not result["images_missing"]:
            result["npz"] = finish(flags, state["sha256"], world_size, images_planned, sample_seconds, method)
    return result


def applicable_flags(flags, method):
    """The flags without the options of samplers other than the one used (all at their defaults)."""
    used = method.sampler.options
    return {
        k: v for k, v in flags.items() if k not in samplers.SAMPLER_OPTION_DEFAULTS or k in used
    }


def finish(flags, checkpoint_sha256, world_size, images_sampled, sample_seconds, method):
    """Rank 0, after every index is on disk: merge to ADM's npz, fill PNGs, write sampling.json."""
    out_dir = flags["out_dir"]
    batch_dir = os.path.join(out_dir, BATCH_DIR)
    num_samples = flags["num_samples"]
    shape = (num_samples, flags["image_size"], flags["image_size"], 3)
    npz_path = os.path.join(out_dir, samples_file_name(shape))
    merge_start = time.time()
    if not os.path.exists(npz_path):
        # Other shards may have written batches since this run checked them.
        check_batch_identities(out_dir, image_defining_flags(flags, checkpoint_sha256, method))
        merge_batches(batch_dir, num_samples, npz_path)
        remove_other_merges(out_dir, npz_path)
    merge_seconds = time.time() - merge_start
    if flags["png"]:
        png_dir = os.path.join(out_dir, PNG_DIR)
        for first, images, _ in iter_samples_in_order(batch_dir, num_samples):
            write_pngs(png_dir, images, range(first, first + len(images)), skip_existing=True)
    summary = dict(
        flags=applicable_flags(flags, method),
        model_path=flags["model_path"],
        checkpoint_sha256=checkpoint_sha256,
        seed=flags["seed"],
        num_samples=num_samples,
        sampler=flags["sampler"],
        timestep_respacing=flags["timestep_respacing"],
        run=run_record(flags, checkpoint_sha256, method),
        # Why the training manifest marks the checkpoint unhealthy (sampled under --allow_unhealthy), else null.
        checkpoint_unhealthy=checkpoint.marked_diverged(checkpoint.manifest_beside(flags["model_path"])),
        image_flags=image_defining_flags(flags, checkpoint_sha256, method),
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
