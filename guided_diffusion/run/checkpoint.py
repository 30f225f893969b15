"""Checkpoint files in ADM's layout, their manifest, finding the one to resume, and strict loading.

A checkpoint at step S in a log dir is ADM's three files plus a manifest written last:

    model{S:06d}.pt          plain model state_dict (float32), loadable by ADM
    ema_{rate}_{S:06d}.pt    plain state_dict of the EMA weights, one per rate
    opt{S:06d}.pt            optimizer state_dict
    loss_weighting{S:06d}.pt with --weight_schedule edm2 only: the learned weighting (learned_weighting.py)
    checkpoint{S:06d}.json   step, samples seen, flags, world size, package version,
                             loss scale, schedule-sampler state, and the files above
                             with their sizes and sha256

Every file is written atomically, and the manifest only after the others, so a set is
complete exactly when its manifest exists and names files that all exist. Resuming
checks the files against the sizes and hashes their manifest records (without
loading them): `--resume_checkpoint auto` passes over a set that fails, saying
which and why, and a named set that fails is refused. A manifest whose `health` says
the run had diverged by then, or whose next set says that every update after it was skipped
(`diverged_sets`), is passed over by `auto` as well.
`load_model_checkpoint(model, path_or_state_dict)` loads ours or any ADM state dict
strictly, failing with one line that lists the missing, unexpected and mis-shaped keys.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import re
import time

import blobfile as bf
import torch

from .. import __version__
from .atomic import atomic_torch_save, atomic_write_text, check_free_space, remove_stale_temps, tensor_bytes

MANIFEST_FORMAT = "debias-adm-checkpoint"
_MANIFEST_RE = re.compile(r"^checkpoint(\d+)\.json$")
_MODEL_RE = re.compile(r"^model(\d+)\.pt$")
_STEP_RE = re.compile(r"^(?:model|opt|loss_weighting|ema_[0-9.eE+-]+_)(\d+)\.pt$")
# Long key lists are cut so that the error stays one readable line.
_MAX_KEYS_SHOWN = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit."""


class CheckpointMismatchError(CheckpointError):
    """A state dict whose keys or shapes differ from the model's."""


def model_filename(step):
    return f"model{step:06d}.pt"


def ema_filename(rate, step):
    return f"ema_{float(rate)}_{step:06d}.pt"


def opt_filename(step):
    return f"opt{step:06d}.pt"


def manifest_filename(step):
    return f"checkpoint{step:06d}.json"


def step_of_checkpoint_file(path):
    """The step in an ADM checkpoint name (`model012345.pt`, `ema_0.9999_012345.pt`), or None."""
    match = _STEP_RE.search(bf.basename(str(path)))
    return int(match.group(1)) if match else None


def manifest_beside(path):
    """The manifest of the checkpoint set a model or EMA file belongs to, or None when there is none."""
    step = step_of_checkpoint_file(path)
    if step is None:
        return None
    manifest_path = bf.join(bf.dirname(str(path)), manifest_filename(step))
    if not bf.exists(manifest_path):
        return None
    return _read_manifest(manifest_path)


def marked_diverged(record):
    """Why the manifest `record` says its run had diverged, or None (also for manifests without a health record)."""
    health = (record or {}).get("health")
    if not isinstance(health, dict) or health.get("healthy") is not False:
        return None
    return str(health.get("reason") or "marked diverged")


def diverged_sets(records):
    """{step: why} of the sets, from {step: manifest}, that are marked diverged or that a later set shows to be:
    when every update after a set was skipped, its own parameters already gave non-finite losses."""
    diverged = {}
    for step, record in sorted(records.items()):
        why = marked_diverged(record)
        if not why:
            continue
        diverged[step] = why
        health = record["health"]
        since = health.get("steps_since_last_save")
        if isinstance(since, int) and since > 0 and health.get("skipped_updates") == since:
            earlier = step - since
            if earlier in records and earlier not in diverged:
                diverged[earlier] = f"every update after it was skipped ({manifest_filename(step)})"
    return diverged


def read_manifests(log_dir):
    """{step: manifest} of the readable manifests in `log_dir` (others are left out)."""
    records = {}
    if not log_dir or not bf.isdir(log_dir):
        return records
    for name in bf.listdir(log_dir):
        match = _MANIFEST_RE.match(name)
        if match:
            with contextlib.suppress(CheckpointError, OSError):
                records[int(match.group(1))] = _read_manifest(bf.join(log_dir, name))
    return records


def healthy_steps(records, steps=None):
    """The steps among `steps` (default: all of `records`) to go back to after a divergence, oldest first: those
    `diverged_sets` leaves, and among them, when there are any, the ones whose last update before the save was
    taken (a set saved right after a skipped update holds parameters that just gave a non-finite loss)."""
    diverged = diverged_sets(records)
    candidates = sorted(step for step in (records if steps is None else steps) if step not in diverged)

    def last_update_taken(step):
        health = records.get(step, {}).get("health")
        return not isinstance(health, dict) or not health.get("consecutive_skipped")

    return [step for step in candidates if last_update_taken(step)] or candidates


def newest_healthy_step(log_dir, before=None):
    """The newest step of `healthy_steps` in `log_dir` before `before`, or None."""
    records = read_manifests(log_dir)
    steps = healthy_steps(records, [step for step in records if before is None or step < before])
    return steps[-1] if steps else None


def parse_resume_step_from_filename(path):
    """ADM's rule: `.../model012345.pt` resumes at step 12345; other names at step 0."""
    match = _MODEL_RE.match(bf.basename(path))
    return int(match.group(1)) if match else 0


def state_dict_digest(state_dict):
    """sha1 over the keys (sorted) and the raw bytes of their tensors."""
    digest = hashlib.sha1()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path):
    """sha256 hex digest of a local or blobfile path's bytes."""
    digest = hashlib.sha256()
    with bf.BlobFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_bytes(data, path, map_location="cpu", weights_only=True):
    """torch.load of a file's bytes; a file torch cannot read is a one-line CheckpointError naming `path`."""
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
    except Exception as e:  # torch raises zip, pickle and runtime errors alike for a bad file
        reason = (str(e).strip().splitlines() or [""])[0]
        if "weights_only" in str(e):  # torch's advice to load it with weights_only=False; it is not a checkpoint
            reason = "its content is not a saved state dict of tensors"
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch file ({type(e).__name__}: {reason})") from None


def read_checkpoint(path, map_location="cpu"):
    """torch.load of a local or blobfile path (tensors and plain containers only)."""
    if bf.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a directory, not a model file")
    try:
        with bf.BlobFile(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({e.strerror or e})") from None
    return load_state_bytes(data, path, map_location=map_location)


def _shown(keys):
    keys = list(keys)
    text = ", ".join(keys[:_MAX_KEYS_SHOWN])
    return text + (f" (+{len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else "")


def check_state_dict(model, state_dict, source="checkpoint"):
    """Raise CheckpointMismatchError unless `state_dict` has exactly the model's keys and shapes."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors, got {type(state_dict).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_shown(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_shown(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} shape mismatch(es): {_shown(mis_shaped)}")
        raise CheckpointMismatchError(
            f"{source} does not fit the model (different architecture flags?): " + "; ".join(parts)
        )


def load_model_checkpoint(model, source, map_location="cpu"):
    """Load a model file (ours or ADM's) or a state dict into `model`, strictly; returns the model.

    Reads `source` in this process only (not a collective), so any rank may call it.
    """
    if isinstance(source, dict):
        state_dict, name = source, "state dict"
    else:
        state_dict, name = read_checkpoint(source, map_location=map_location), f"checkpoint {source}"
    check_state_dict(model, state_dict, name)
    model.load_state_dict(state_dict, strict=True)
    return model


def save_checkpoint(log_dir, step, *, model_state, ema_states, opt_state, manifest, extra_states=None):
    """Write the checkpoint set for `step` into `log_dir`; `ema_states` maps rate -> state dict.

    `extra_states` maps a key of the manifest's `files` to (file name, state): a state of its own beside
    ADM's files (the learned loss weighting's), named and hashed in the manifest like them.

    `manifest` holds the caller's extra fields (flags, sampler state, ...); file names,
    step, format and package version are added here. Returns the manifest's path.
    A set that does not fit on the disk is refused before its first file, and one
    that fails part-way is removed, so no set is left without its manifest.
    """
    bf.makedirs(log_dir)
    files = {
        "model": model_filename(step),
        "ema": {str(float(rate)): ema_filename(rate, step) for rate in ema_states},
        "opt": opt_filename(step),
    }
    states = {files["model"]: model_state}
    states.update({files["ema"][str(float(rate))]: state for rate, state in ema_states.items()})
    states[files["opt"]] = opt_state
    for key, (name, state) in (extra_states or {}).items():
        files[key] = name
        states[name] = state
    check_free_space(log_dir, sum(tensor_bytes(s) for s in states.values()), f"the checkpoint at step {step}")
    written, complete = {}, False
    path = bf.join(log_dir, manifest_filename(step))
    # Everything up to the manifest's rename is undone on any exit (a full disk, Ctrl-C): no set without a manifest.
    try:
        for name, state in states.items():
            written[name] = atomic_torch_save(state, bf.join(log_dir, name))
        record = dict(manifest)
        record.update(
            format=MANIFEST_FORMAT,
            step=step,
            package_version=__version__,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            files=files,
            sha256={name: digest for name, (digest, _) in written.items()},
            bytes={name: size for name, (_, size) in written.items()},
        )
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        complete = True
    except BaseException:
        if not complete:
            for name in written:
                with contextlib.suppress(FileNotFoundError):
                    bf.remove(bf.join(log_dir, name))
        raise
    return path


@dataclasses.dataclass
class ResumePoint:
    """What to restore: the step, the model file, EMA files by rate, the optimizer file, the manifest.

    `note` is the line that says which newer sets `auto` passed over and why (None when none).
    """

    step: int
    model_path: str
    ema_paths: dict
    opt_path: str | None
    manifest: dict | None
    note: str | None = None


def _read_manifest(path):
    try:
        with bf.BlobFile(path, "r") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint manifest {path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return record


def _resume_point_from_manifest(path, record):
    directory = bf.dirname(path)
    files = record["files"]
    return ResumePoint(
        step=int(record["step"]),
        model_path=bf.join(directory, files["model"]),
        ema_paths={rate: bf.join(directory, name) for rate, name in files["ema"].items()},
        opt_path=bf.join(directory, files["opt"]),
        manifest=record,
    )


def verify_checkpoint_set(point):
    """Why the files of `point` are not the ones its manifest recorded, or None when they are.

    Sizes and sha256s recorded at save time are compared without loading anything.
    A manifest written before those were recorded has its `model_sha1` (of the
    model's tensors) checked instead, which reads the model file.
    """
    paths = [p for p in [point.model_path, point.opt_path, *point.ema_paths.values()] if p]
    for path in paths:
        if not bf.exists(path):
            return f"{bf.basename(path)} is missing"
    record = point.manifest or {}
    hashes, sizes = record.get("sha256") or {}, record.get("bytes") or {}
    if hashes:
        for path in paths:
            name = bf.basename(path)
            if name not in hashes:
                continue
            size = bf.stat(path).size
            if name in sizes and size != sizes[name]:
                return f"{name} holds {size:,} bytes where its manifest records {sizes[name]:,}: truncated or replaced"
            if file_sha256(path) != hashes[name]:
                return f"{name} does not match the sha256 its manifest records: corrupt or replaced"
        return None
    if record.get("model_sha1"):
        try:
            state = read_checkpoint(point.model_path)
        except CheckpointError as e:
            return str(e)
        if state_dict_digest(state) != record["model_sha1"]:
            return f"{bf.basename(point.model_path)} does not match the model_sha1 its manifest records: corrupt or replaced"
    return None


def find_latest_checkpoint(log_dir):
    """The newest checkpoint set in `log_dir` whose files match its manifest, or None if there is none.

    Newer sets passed over (an unreadable manifest, a missing, truncated or changed
    file) are named with the reason in the point's `note`; when there are sets but
    none passes, CheckpointError lists them, as starting afresh would overwrite them.
    """
    if not bf.isdir(log_dir):
        return None
    steps = sorted(
        (int(m.group(1)), name) for name in bf.listdir(log_dir) if (m := _MANIFEST_RE.match(name))
    )
    skipped = []
    diverged = diverged_sets(read_manifests(log_dir))
    for step, name in reversed(steps):
        path = bf.join(log_dir, name)
        try:
            point = _resume_point_from_manifest(path, _read_manifest(path))
        except CheckpointError as e:
            skipped.append(f"step {step} ({e})")
            continue
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped.append(f"step {step} ({name} lacks the step or file names)")
            continue
        if step in diverged:
            skipped.append(f"step {step} (diverged: {diverged[step]})")
            continue
        problem = verify_checkpoint_set(point)
        if problem:
            skipped.append(f"step {step} ({problem})")
            continue
        if skipped:
            point.note = f"--resume_checkpoint auto: skipped {'; '.join(skipped)}; resuming from step {point.step}"
        return point
    if skipped:
        raise CheckpointError(
            f"--resume_checkpoint auto: no usable checkpoint in {log_dir}: {'; '.join(skipped)}; "
            "move them away to start afresh, or name a file to resume from"
        )
    return None


def _verified(point, given):
    problem = verify_checkpoint_set(point)
    if problem:
        raise CheckpointError(f"--resume_checkpoint {given}: {problem}")
    return point


def is_checkpoint_file_name(name):
    """Whether `name` is a file that `save_checkpoint` writes (model, EMA, optimizer or manifest)."""
    return bool(_STEP_RE.match(name) or _MANIFEST_RE.match(name))


def remove_stale_temps_of_checkpoints(log_dir):
    """Delete temp files of checkpoint writes that a killed run left in `log_dir`; returns their paths.

    Hold the log dir's run lock: a live writer's temp file looks the same.
    """
    return remove_stale_temps(log_dir, owns=is_checkpoint_file_name)


def resolve_resume_checkpoint(resume_checkpoint, log_dir):
    """The ResumePoint for `--resume_checkpoint`, or None to start from scratch.

    "" starts fresh; "auto" takes the newest complete set in `log_dir` (fresh if none);
    a manifest path (`checkpoint*.json`) takes its set; any other path is a model file,
    ADM-style: the step comes from its name and EMA, optimizer and manifest files of that
    step beside it are used when present.
    """
    if not resume_checkpoint:
        return None
    if resume_checkpoint == "auto":
        return find_latest_checkpoint(log_dir)
    if not bf.exists(resume_checkpoint):
        raise FileNotFoundError(f"--resume_checkpoint {resume_checkpoint}: no such file")
    if bf.isdir(resume_checkpoint):
        raise CheckpointError(
            f"--resume_checkpoint {resume_checkpoint}: is a directory; give a model file, a checkpoint*.json "
            "manifest, or auto (with --log_dir)"
        )
    if _MANIFEST_RE.match(bf.basename(resume_checkpoint)):
        try:
            point = _resume_point_from_manifest(resume_checkpoint, _read_manifest(resume_checkpoint))
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"--resume_checkpoint {resume_checkpoint}: lacks the step or file names") from None
        return _refuse_overwriting_later_sets(_verified(point, resume_checkpoint), resume_checkpoint, log_dir)
    check_resume_file_name(resume_checkpoint)
    step = parse_resume_step_from_filename(resume_checkpoint)
    if not _MODEL_RE.match(bf.basename(resume_checkpoint)):
        # Not an ADM-named file (e.g. ADM's released weights): nothing beside it can be attributed to it.
        point = ResumePoint(step=0, model_path=resume_checkpoint, ema_paths={}, opt_path=None, manifest=None)
        return _refuse_overwriting_later_sets(point, resume_checkpoint, log_dir)
    directory = bf.dirname(resume_checkpoint)
    manifest_path = bf.join(directory, manifest_filename(step))
    manifest = _read_manifest(manifest_path) if bf.exists(manifest_path) else None
    ema_paths = {}
    for name in bf.listdir(directory):
        match = re.match(r"^ema_([0-9.eE+-]+)_(\d+)\.pt$", name)
        if match and int(match.group(2)) == step:
            ema_paths[str(float(match.group(1)))] = bf.join(directory, name)
    opt_path = bf.join(directory, opt_filename(step))
    point = ResumePoint(
        step=step,
        model_path=resume_checkpoint,
        ema_paths=ema_paths,
        opt_path=opt_path if bf.exists(opt_path) else None,
        manifest=manifest,
    )
    return _refuse_overwriting_later_sets(_verified(point, resume_checkpoint), resume_checkpoint, log_dir)


def check_resume_file_name(path):
    """Refuse an EMA or optimizer file as --resume_checkpoint.

    ADM's rule reads any name but model*.pt as step 0, so an EMA or optimizer file would restart the
    run at step 0 with a fresh AdamW and then write over the run's own checkpoints."""
    name = bf.basename(path)
    step = step_of_checkpoint_file(name)
    if step is None or _MODEL_RE.match(name):
        return
    kind = "an optimizer state" if name.startswith("opt") else "an EMA model"
    raise CheckpointError(
        f"--resume_checkpoint {path}: {kind} file, which would restart at step 0 and overwrite the run; "
        f"expected a model file modelNNNNNN.pt (here {model_filename(step)}, whose EMA and optimizer files are "
        "loaded with it), a checkpoint*.json manifest, or auto"
    )


def later_checkpoint_files(log_dir, step):
    """The checkpoint files in `log_dir` of steps after `step`, sorted by step then name."""
    if not log_dir or not bf.isdir(log_dir):
        return []
    later = []
    for name in bf.listdir(log_dir):
        match = _MANIFEST_RE.match(name)
        file_step = int(match.group(1)) if match else step_of_checkpoint_file(name)
        if file_step is not None and file_step > step:
            later.append((file_step, name))
    return [name for _, name in sorted(later)]


def _refuse_overwriting_later_sets(point, given, log_dir):
    # `auto` may pass over a damaged newer set on purpose (it says so); a named file must not
    # silently rewind a run whose later checkpoints it would then write over.
    later = later_checkpoint_files(log_dir, point.step)
    if later:
        raise CheckpointError(
            f"--resume_checkpoint {given} resumes at step {point.step}, but --log_dir {log_dir} holds checkpoint "
            f"files of later steps that this run would overwrite: {_shown(later)}; resume from the newest set "
            "with --resume_checkpoint auto, or train into another --log_dir"
        )
    return point
