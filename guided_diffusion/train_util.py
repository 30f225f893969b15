"""The training loop (ADM's TrainLoop) and `train(flags)`, which builds everything from flags.

One iteration: sample timesteps from the schedule sampler, compute
`diffusion.training_losses` (which already applies `--weight_schedule`), multiply by the
sampler's importance weights, average, backward (in microbatches if asked), step the
optimizer through the mixed-precision trainer, update the EMAs. Gradients are averaged
over ranks by DistributedDataParallel, so every rank holds the same parameters.

Steps count iterations, as in ADM: `modelS.pt` holds the weights after S iterations, and a
step skipped for a non-finite loss or gradient still counts.

A diverged run stops at its next save instead of saving (divergence.py).
"""

import contextlib
import random
import time

import blobfile as bf
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import dist_util, logger
from .run import fast_paths, host_sync, preemption, progress, run_lock
from .run.checkpoint import (
    CheckpointError,
    check_resume_file_name,
    check_state_dict,
    manifest_filename,
    remove_stale_temps_of_checkpoints,
    resolve_resume_checkpoint,
    save_checkpoint,
    state_dict_digest,
)
from .run.checkpoint_flags import parse_allowed_changes, resume_flag_changes, weighting_change
from .run.divergence import DivergenceWatch, health_flag_defaults
from .fp16_util import MixedPrecisionTrainer, fp16_fallback_note, resolve_precision
from .image_datasets import load_data, shard_digest
from .learned_weighting import FixedWeighting, for_training as weighting_for_training
from .nn import update_ema
from .resample import LossAwareSampler, UniformSampler, check_schedule_sampler, create_named_schedule_sampler
from .run.retention import check_retention_flags, prune_checkpoints
from .run.training_flags import check_training_flag_values
from .script_util import check_model_and_diffusion_flags, create_model_and_diffusion, model_and_diffusion_defaults
from .run.timestep_metrics import TimestepBinErrors
from .weighting import check_given_parameters

MAX_CONSECUTIVE_NONFINITE = 100


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or ranks out of sync)."""


def training_defaults():
    """ADM's image_train flags, plus max_steps, log_dir, precision, seed, num_workers, the crop/flip options,
    checkpoint retention, the device and the fast paths."""
    return dict(
        data_dir="",
        log_dir="",
        schedule_sampler="uniform",
        lr=1e-4,
        weight_decay=0.0,
        lr_anneal_steps=0,
        max_steps=0,
        batch_size=1,
        microbatch=-1,
        ema_rate="0.9999",
        ema_warmup=False,
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        fp16_scale_growth=1e-3,
        precision="",
        seed=0,
        num_workers=1,
        random_crop=False,
        random_flip=True,
        keep_checkpoints=0,
        keep_every=0,
        allow_changed_flags="",
        device="",
        **dist_util.launch_flag_defaults(),
        **fast_paths.training_flag_defaults(),
        **health_flag_defaults(),
    )


def image_train_defaults():
    defaults = model_and_diffusion_defaults()
    defaults.update(training_defaults())
    return defaults


def parse_ema_rates(ema_rate):
    """ADM's comma list ("0.9999,0.999") as floats in [0, 1)."""
    if isinstance(ema_rate, (int, float)):
        ema_rate = str(ema_rate)
    try:
        rates = [float(x) for x in ema_rate.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad --ema_rate {ema_rate!r}: expected comma-separated numbers like 0.9999") from None
    if not rates or any(not 0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"bad --ema_rate {ema_rate!r}: expected one or more rates in [0, 1)")
    if len(set(rates)) != len(rates):
        raise ValueError(f"bad --ema_rate {ema_rate!r}: a rate is repeated")
    return rates


def ema_decay(rate, updates_before, warmup=False):
    """The EMA decay of one update; `updates_before` counts the iterations already done.

    ADM uses `rate` from the first step, so a short run's EMA is mostly its random
    initialisation (0.999^1000 = 37% after 1000 steps). With `warmup` the decay is
    min(rate, (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage with
    num_updates), which averages roughly the last tenth of a short run and reaches
    `rate` after 9 / (1 - rate) - 10 updates.
    """
    if not warmup:
        return rate
    return min(rate, (1.0 + updates_before) / (10.0 + updates_before))


def stream_seed(*parts):
    """A 32-bit seed derived from integers (e.g. seed, rank, step) without collisions between tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ADM's keyword entry point takes the same defaults as the flags (precision is the resolved one).
_FLAG_DEFAULTS = training_defaults()


class TrainLoop:
    def __init__(
        self,
        *,
        model,
        diffusion,
        data,
        batch_size,
        lr,
        microbatch=_FLAG_DEFAULTS["microbatch"],
        ema_rate=_FLAG_DEFAULTS["ema_rate"],
        ema_warmup=_FLAG_DEFAULTS["ema_warmup"],
        log_interval=_FLAG_DEFAULTS["log_interval"],
        save_interval=_FLAG_DEFAULTS["save_interval"],
        resume_checkpoint=_FLAG_DEFAULTS["resume_checkpoint"],
        precision="fp32",
        fp16_scale_growth=_FLAG_DEFAULTS["fp16_scale_growth"],
        schedule_sampler=None,
        weight_decay=_FLAG_DEFAULTS["weight_decay"],
        lr_anneal_steps=_FLAG_DEFAULTS["lr_anneal_steps"],
        max_steps=_FLAG_DEFAULTS["max_steps"],
        log_dir=None,
        flags=None,
        seed=None,
        max_consecutive_nonfinite=MAX_CONSECUTIVE_NONFINITE,
        keep_checkpoints=_FLAG_DEFAULTS["keep_checkpoints"],
        keep_every=_FLAG_DEFAULTS["keep_every"],
        stop_signals=None,
        fast_path_options=None,
        allow_changed_flags=_FLAG_DEFAULTS["allow_changed_flags"],
        learned_weighting=None,
    ):
        check_training_flag_values(dict(
            batch_size=batch_size, microbatch=microbatch, lr=lr, weight_decay=weight_decay, log_interval=log_interval,
            save_interval=save_interval, max_steps=max_steps, lr_anneal_steps=lr_anneal_steps, seed=seed))
        check_retention_flags(keep_checkpoints, keep_every)
        self.model = model
        self.diffusion = diffusion
        self.data = data
        self.batch_size = batch_size
        self.microbatch = microbatch if microbatch > 0 else batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema_rates = parse_ema_rates(ema_rate)
        self.ema_warmup = bool(ema_warmup)
        self.log_interval = log_interval
        self.save_interval = save_interval
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.learned_weighting = learned_weighting or FixedWeighting()  # EDM2's u(sigma), learned_weighting.py
        self.timestep_errors = TimestepBinErrors(diffusion)
        self._step_mse = None
        self.lr_anneal_steps = lr_anneal_steps
        self.max_steps = max_steps
        self.log_dir = log_dir or logger.get_dir()
        self.flags = dict(flags or {})
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.keep_checkpoints = keep_checkpoints
        self.keep_every = keep_every
        # A preemption.StopSignals (or anything with `requested`): checked by all ranks at every step boundary.
        self.stop_signals = stop_signals
        self.stopped_by_signal = False
        self.fast_path_options = fast_path_options or fast_paths.FastPathOptions()
        self.world_size = dist_util.get_world_size()
        self.global_batch = batch_size * self.world_size

        self.step = 0
        self.samples = 0
        resume = dist_util.broadcast_object(
            resolve_resume_checkpoint(resume_checkpoint, self.log_dir) if dist_util.is_main() else None
        )
        if resume_checkpoint and resume is None:
            logger.log(f"--resume_checkpoint auto: no complete checkpoint in {self.log_dir}; starting at step 0")
        if resume is not None and resume.note:
            logger.warn(resume.note)
        self.flag_changes = []
        if resume is not None:
            self._check_resume_flags(resume, parse_allowed_changes(allow_changed_flags))
            self._load_model(resume)
        dist_util.sync_params(list(model.parameters()) + list(model.buffers()))

        if precision == "fp16" and not hasattr(model, "convert_to_fp16"):
            raise ValueError("--precision fp16 needs a model with convert_to_fp16() (ADM's UNetModel)")
        fast_paths.prepare_training_model(model, self.fast_path_options)
        self.mp_trainer = MixedPrecisionTrainer(model=model, precision=precision, fp16_scale_growth=fp16_scale_growth)
        self.opt = fast_paths.make_adamw(self.mp_trainer.master_params, lr, weight_decay, self.fast_path_options.optimizer_impl)
        self.learned_weighting.attach(self.opt, lr, weight_decay)
        self.ema_params = {rate: [p.detach().clone().float() for p in self.mp_trainer.master_params] for rate in self.ema_rates}
        self._last_saved_step = None
        if resume is not None:
            self._load_training_state(resume)
            self._last_saved_step = self.step
        dropped = logger.drop_rows_after("step", self.step)
        if dropped:
            logger.log(f"progress.csv: dropped {dropped} row(s) past step {self.step}, which this run does again")

        if dist.is_initialized():
            device_ids = [dist_util.dev()] if dist_util.dev().type == "cuda" else None
            self.ddp_model = DDP(model, device_ids=device_ids, bucket_cap_mb=128)
        else:
            self.ddp_model = model
        fast_paths.compile_training_model(self.ddp_model, self.fast_path_options)
        if seed is not None:
            # Every rank, and every resumed segment, draws its own noise, timesteps and data order.
            seed_all(stream_seed(seed, dist_util.get_rank(), self.step))

        self._consecutive_nonfinite = 0
        self.divergence = DivergenceWatch(self.mp_trainer.precision, flags)
        self._interval_steps = 0
        self._interval_skipped = 0
        self._interval_start = time.time()
        self.deferred_log = host_sync.DeferredLog()

    # -- resuming -----------------------------------------------------------------------

    def _check_resume_flags(self, resume, allowed):
        manifest = resume.manifest or {}
        if not self.flags or not manifest.get("flags"):
            return
        source = bf.join(bf.dirname(resume.model_path), manifest_filename(resume.step))
        changes = resume_flag_changes(manifest["flags"], self.flags, allowed, source)
        for change in changes:
            logger.warn(f"--allow_changed_flags: --{change['flag']} {change['to']} (checkpoint at step {resume.step}: "
                        f"{change['from']}); recorded in the manifests of this run")
        previous = manifest.get("flag_changes")
        self.flag_changes = (list(previous) if isinstance(previous, list) else []) + [
            dict(step=resume.step, **change) for change in changes
        ]

    def _load_model(self, resume):
        state = dist_util.load_state_dict(resume.model_path, map_location="cpu")
        check_state_dict(self.model, state, f"--resume_checkpoint {resume.model_path}")
        self.model.load_state_dict(state, strict=True)
        self.step = resume.step
        logger.log(f"resuming from {resume.model_path} at step {resume.step}")

    def _load_training_state(self, resume):
        self.learned_weighting.load_beside(resume)
        for rate in self.ema_rates:
            path = resume.ema_paths.get(str(float(rate)))
            if path is None:
                logger.warn(f"no EMA file for rate {rate} at step {resume.step}; starting that EMA from the model")
                continue
            state = dist_util.load_state_dict(path, map_location="cpu")
            check_state_dict(self.model, state, f"EMA checkpoint {path}")
            self.ema_params[rate] = self.mp_trainer.state_dict_to_master_params(state)
        if resume.opt_path is None:
            logger.warn(f"no optimizer file for step {resume.step}; starting AdamW from scratch")
        else:
            # On the CPU: load_state_dict moves each state tensor to its parameter's device but leaves AdamW's `step`
            # where it is, as torch keeps it for a fresh optimizer; on the GPU every step would read it back.
            opt_state = dist_util.load_state_dict(resume.opt_path, map_location="cpu")
            try:
                self.opt.load_state_dict(opt_state)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"optimizer checkpoint {resume.opt_path} does not fit the model: {e}") from None
            # The flags given now win over the hyperparameters stored with the optimizer state.
            for group in self.opt.param_groups:
                group["lr"] = self.lr
                group["weight_decay"] = self.weight_decay
        manifest = resume.manifest or {}
        change = weighting_change(manifest.get("flags"), self.flags) if self.flags else None
        if change:
            logger.warn(change)
        self.samples = int(manifest.get("samples", self.step * self.global_batch))
        if "lg_loss_scale" in manifest and self.mp_trainer.precision == "fp16" and manifest.get("precision") == "fp16":
            self.mp_trainer.lg_loss_scale = float(manifest["lg_loss_scale"])
        sampler_record = manifest.get("schedule_sampler")
        sampler_name = type(self.schedule_sampler).__name__
        if sampler_record is None:
            logger.log("no schedule-sampler state in the checkpoint; the sampler starts fresh")
        elif sampler_record.get("name") != sampler_name:
            logger.warn(f"checkpoint's schedule sampler is {sampler_record.get('name')}, now {sampler_name}; starting it fresh")
        else:
            self.schedule_sampler.load_state_dict(sampler_record["state"])

    # -- the loop -----------------------------------------------------------------------

    def _last_step(self):
        limits = [m for m in (self.max_steps, self.lr_anneal_steps) if m > 0]
        return min(limits) if limits else None

    def _done(self):
        last = self._last_step()
        return last is not None and self.step >= last

    def run_loop(self):
        while not self._done():
            batch, cond = next(self.data)
            self.run_step(batch, cond)
            if self.stopped_by_signal:
                logger.log(f"stopping at step {self.step}: a rank received {self.stop_signals.signal_name or 'a stop signal'}")
                break
            if self.step % self.log_interval == 0:
                self.log_interval_stats()
            if self.step % self.save_interval == 0:
                self.save()
        if self._interval_steps:
            self.log_interval_stats()
        if self._last_saved_step != self.step:
            self.save()

    def run_step(self, batch, cond):
        self._anneal_lr()
        timesteps, raw_losses, weighted_terms, finite = self.forward_backward(batch, cond)
        square_sum, all_finite, stop = host_sync.step_decision(self.mp_trainer, finite, self.stop_signals)
        if stop:  # this step is dropped: the run stops at the boundary where a rank saw the request, as all agree
            self.stopped_by_signal = True
            self.mp_trainer.zero_grad()
            self.learned_weighting.zero_grad()
            return None
        took_step, _ = self.mp_trainer.optimize(self.opt, skip=not all_finite, checked=True)
        self.learned_weighting.zero_grad()
        updates_before = self.step
        self.step += 1
        self.samples += self.global_batch
        self._interval_steps += 1
        self.divergence.step_done(took_step)
        if took_step:
            self._consecutive_nonfinite = 0
            for rate, params in self.ema_params.items():
                update_ema(params, self.mp_trainer.master_params, rate=ema_decay(rate, updates_before, self.ema_warmup))
            if isinstance(self.schedule_sampler, LossAwareSampler):
                self.schedule_sampler.update_with_local_losses(timesteps, raw_losses)
            self.deferred_log.add(progress.log_step, self, timesteps, self._step_mse, square_sum, weighted_terms)
            return True
        self._consecutive_nonfinite += 1
        self._interval_skipped += 1
        scale_note = f"; loss scale now 2^{self.mp_trainer.lg_loss_scale:g}" if self.mp_trainer.precision == "fp16" else ""
        logger.warn(
            f"step {self.step}: non-finite loss or gradient, update skipped "
            f"({self._consecutive_nonfinite} in a row{scale_note})"
        )
        if self._consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise TrainingError(
                f"training stopped at step {self.step}: {self._consecutive_nonfinite} consecutive steps had a "
                f"non-finite loss or gradient (diverged); {self.divergence.last_healthy_text(self.log_dir, self.step)}"
            )
        return False

    def forward_backward(self, batch, cond):
        """Backward of the batch-mean loss; returns (t, losses, importance-weighted terms, finite?)."""
        device = dist_util.dev()
        batch = host_sync.to_device(batch, device)
        cond = {k: host_sync.to_device(v, device) for k, v in cond.items()}
        all_t, all_losses, all_terms, all_mse, finite = [], [], {}, [], torch.ones((), dtype=torch.bool, device=device)
        size = batch.shape[0]
        for start in range(0, size, self.microbatch):
            micro = batch[start : start + self.microbatch]
            micro_cond = {k: v[start : start + self.microbatch] for k, v in cond.items()}
            last = start + self.microbatch >= size
            t, weights = self.schedule_sampler.sample(micro.shape[0], device)
            sync = contextlib.nullcontext() if last or self.ddp_model is self.model else self.ddp_model.no_sync()
            with sync:
                with self.mp_trainer.autocast():
                    losses = self.diffusion.training_losses(self.ddp_model, micro, t, model_kwargs=micro_cond)
                losses = self.learned_weighting.reweigh(losses, t)
                # Microbatches are weighted by their share so the gradient is that of the batch mean.
                loss = (losses["loss"].float() * weights).mean() * (micro.shape[0] / size)
                finite = finite & torch.isfinite(loss)
                self.mp_trainer.backward(loss)
            all_t.append(t.detach())
            all_losses.append(losses["loss"].detach().float())
            if "mse" in losses:
                all_mse.append(losses["mse"].detach().float())
            for key, value in losses.items():
                all_terms.setdefault(key, []).append(value.detach().float() * weights)
        terms = {k: torch.cat(v) for k, v in all_terms.items()}
        self._step_mse = torch.cat(all_mse) if all_mse else None  # unweighted, for the per-band errors
        return torch.cat(all_t), torch.cat(all_losses), terms, finite

    def _log_losses(self, timesteps, terms):
        quartiles = (4 * timesteps.cpu() // self.diffusion.num_timesteps).tolist()
        for key, values in terms.items():
            logger.logkv_mean(key, values.mean().item())
            for quartile, value in zip(quartiles, values.tolist()):
                logger.logkv_mean(f"{key}_q{quartile}", value)

    def _anneal_lr(self):
        if not self.lr_anneal_steps:
            return
        lr = self.lr * (1 - self.step / self.lr_anneal_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def log_interval_stats(self):
        """Write one row of interval statistics; every rank calls this together."""
        elapsed = max(time.time() - self._interval_start, 1e-9)
        self.deferred_log.flush()
        logger.logkv("step", self.step)
        logger.logkv("samples", self.samples)
        logger.logkv("steps_per_sec", self._interval_steps / elapsed)
        logger.logkv("images_per_sec", self._interval_steps * self.global_batch / elapsed)
        logger.logkv("lr", self.opt.param_groups[0]["lr"])
        logger.logkv("param_norm", self.mp_trainer.param_norm())
        logger.logkv("skipped_steps", self._interval_skipped)
        if self.mp_trainer.precision == "fp16":
            logger.logkv("lg_loss_scale", self.mp_trainer.lg_loss_scale)
        self.learned_weighting.log_curve()
        row = logger.dumpkvs()
        logger.log(progress.progress_line(self.step, self._last_step(), row))
        self._interval_steps = 0
        self._interval_skipped = 0
        self._interval_start = time.time()
        return row

    # -- checkpoints --------------------------------------------------------------------

    def save(self):
        """Write the checkpoint set for this step (rank 0), after checking all ranks agree.

        A diverged run stops here instead (DivergenceWatch.stop_reason), before any file is written or pruned.
        """
        health = self.divergence.health(self.mp_trainer.master_params, self.step)
        stop = self.divergence.stop_reason(health, self.step, self.log_dir)
        if stop:
            raise TrainingError(stop)
        model_state = self.mp_trainer.master_params_to_state_dict()
        digest = state_dict_digest(model_state)
        digests = dist_util.all_gather_object(digest)
        if len(set(digests)) != 1:
            raise TrainingError(f"parameters differ between ranks at step {self.step} (sha1 by rank: {digests})")
        if dist_util.is_main():
            sampler_state = {k: np.asarray(v).tolist() for k, v in self.schedule_sampler.state_dict().items()}
            manifest = dict(
                samples=self.samples,
                world_size=self.world_size,
                batch_size=self.batch_size,
                global_batch=self.global_batch,
                precision=self.mp_trainer.precision,
                lg_loss_scale=self.mp_trainer.lg_loss_scale,
                ema_rates=[str(float(r)) for r in self.ema_rates],
                ema_warmup=self.ema_warmup,
                model_sha1=digest,
                schedule_sampler=dict(name=type(self.schedule_sampler).__name__, state=sampler_state),
                flags=self.flags,
                health=health,
            )
            if self.flag_changes:
                manifest["flag_changes"] = self.flag_changes
            try:
                path = save_checkpoint(
                    self.log_dir,
                    self.step,
                    model_state=model_state,
                    ema_states={r: self.mp_trainer.master_params_to_state_dict(p) for r, p in self.ema_params.items()},
                    opt_state=self.opt.state_dict(),
                    manifest=manifest, extra_states=self.learned_weighting.checkpoint_states(self.step),
                )
            except KeyboardInterrupt:
                newest = "none" if self._last_saved_step is None else f"step {self._last_saved_step}"
                raise KeyboardInterrupt(
                    f"while saving the checkpoint at step {self.step}: none of its files was left (the newest complete "
                    f"set is {newest}); resume with --resume_checkpoint auto"
                ) from None
            logger.log(f"saved checkpoint {path}; parameters identical on {self.world_size} rank(s): sha1 {digest}")
            deleted = prune_checkpoints(self.log_dir, self.keep_checkpoints, self.keep_every)
            if deleted:
                logger.log(f"deleted checkpoint set(s) at step(s) {', '.join(map(str, deleted))} (--keep_checkpoints {self.keep_checkpoints}, --keep_every {self.keep_every})")
            logger.sync()
        dist_util.barrier()
        self._last_saved_step = self.step
        self.divergence.saved()


def check_training_flags(flags, given=()):
    """(the flags completed from the defaults, the note on given schedule parameters); raises on a bad value.

    `given` names the flags the user set (command line or config): a schedule parameter among them that
    the schedule does not read is refused. Needs no model, data, device or log dir (a plan check runs it).
    """
    defaults = image_train_defaults()
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ValueError(f"unknown training flag(s): {', '.join(unknown)}")
    flags = {**defaults, **flags}
    parameters_note = check_given_parameters(flags["weight_schedule"], given)
    check_schedule_sampler(flags["schedule_sampler"])
    check_model_and_diffusion_flags(flags)
    check_resume_file_name(flags["resume_checkpoint"])
    parse_allowed_changes(flags["allow_changed_flags"])
    check_training_flag_values(flags)
    parse_ema_rates(flags["ema_rate"])
    check_retention_flags(flags["keep_checkpoints"], flags["keep_every"])
    return flags, parameters_note


def train(flags, given=()):
    """Train from a dict of `image_train_defaults()` flags (see check_training_flags); call after
    `dist_util.setup_dist()`. Returns the finished TrainLoop."""
    flags, parameters_note = check_training_flags(flags, given)
    rank, world_size = dist_util.get_rank(), dist_util.get_world_size()
    log_dir = dist_util.broadcast_object(flags["log_dir"] or logger.default_log_dir())
    with run_lock.removed_when_refused(log_dir, enabled=rank == 0), run_lock.hold(
        log_dir, "--log_dir", enabled=rank == 0, clean=remove_stale_temps_of_checkpoints
    ) as lock:
        logger.configure(log_dir, rank=rank)
        try:
            for note in lock.notes if lock else []:
                logger.log(note)
            # Installed before the data loader forks its workers, so that they inherit the handler instead of dying.
            with preemption.StopSignals() as stop_signals:
                return _train(flags, log_dir, rank, world_size, parameters_note, stop_signals)
        finally:
            logger.close()


# The flags that load_data and TrainLoop take under their own names.
_LOADER_FLAGS = ("data_dir", "batch_size", "image_size", "class_cond", "random_crop", "random_flip", "num_workers")
_LOOP_FLAGS = (
    "batch_size", "microbatch", "lr", "ema_rate", "ema_warmup", "log_interval", "save_interval", "resume_checkpoint",
    "fp16_scale_growth", "weight_decay", "lr_anneal_steps", "max_steps", "seed", "keep_checkpoints", "keep_every",
    "allow_changed_flags",
)


def _train(flags, log_dir, rank, world_size, parameters_note, stop_signals):
    precision = resolve_precision(flags["precision"], flags["use_fp16"], dist_util.dev().type)
    fast_path_options = fast_paths.FastPathOptions.from_flags(flags, dist_util.dev().type)
    for note in (parameters_note, fp16_fallback_note(flags["precision"], flags["use_fp16"], precision)):
        if note:
            logger.log(note)
    for line in dist_util.all_gather_object(dist_util.device_report()):
        logger.log(line)
    logger.log(
        f"training in {log_dir} on {world_size} rank(s) ({dist_util.launcher() or 'no process group'}, "
        f"{dist_util.dev()}), batch {flags['batch_size']} per rank = {flags['batch_size'] * world_size} in all, "
        f"precision {precision}"
    )
    # The same seed on every rank gives identical initial weights (then synced anyway).
    seed_all(flags["seed"])
    model_flags = {k: flags[k] for k in model_and_diffusion_defaults()}
    model_flags["use_fp16"] = precision == "fp16"
    model, diffusion = create_model_and_diffusion(**model_flags)
    model.to(dist_util.dev())
    schedule_sampler = create_named_schedule_sampler(flags["schedule_sampler"], diffusion)
    data = load_data(
        **{key: flags[key] for key in _LOADER_FLAGS},
        rank=rank,
        world_size=world_size,
        num_classes=flags["num_classes"] if flags["class_cond"] else None,
    )
    shard = data.dataset.local_images
    for r, (count, digest) in enumerate(dist_util.all_gather_object((len(shard), shard_digest(shard)))):
        logger.log(f"data shard rank={r} images={count} sha1={digest}")
    loop = TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        **{key: flags[key] for key in _LOOP_FLAGS},
        precision=precision,
        schedule_sampler=schedule_sampler, learned_weighting=weighting_for_training(diffusion, precision),
        log_dir=log_dir,
        flags=flags,
        stop_signals=stop_signals,
        fast_path_options=fast_path_options,
    )
    loop.run_loop()
    return loop
