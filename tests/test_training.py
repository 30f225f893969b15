"""Training: data loading, checkpoints, mixed precision, the loop, and 2-rank runs under mpiexec/torchrun."""

import copy
import csv
import hashlib
import importlib.util
import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from guided_diffusion import logger
from guided_diffusion.run.checkpoint import (
    CheckpointMismatchError,
    find_latest_checkpoint,
    load_model_checkpoint,
    save_checkpoint,
)
from guided_diffusion.fp16_util import MixedPrecisionTrainer, resolve_precision
from guided_diffusion.image_datasets import ImageLoadError, load_data, shard
from guided_diffusion.image_ops import center_crop_arr
from guided_diffusion.resample import ScheduleSampler
from guided_diffusion.script_util import (
    create_gaussian_diffusion,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from guided_diffusion.train_util import TrainingError, TrainLoop, ema_decay, train

REPO = Path(__file__).resolve().parents[1]


def image_names(n_per_class=12):
    return [f"cat_{i:03d}.png" for i in range(n_per_class)] + [f"dog_{i:03d}.png" for i in range(n_per_class)]


def training_flags(tiny, data_dir, log_dir, **overrides):
    flags = dict(tiny, data_dir=str(data_dir), log_dir=str(log_dir), batch_size=2, lr=1e-3, num_workers=0)
    flags.update(log_interval=1, save_interval=2, max_steps=2, seed=0)
    flags.update(overrides)
    return flags


def read_progress(log_dir):
    with open(Path(log_dir) / "progress.csv") as f:
        return list(csv.DictReader(f))


def sha1_of_state(state):
    """Independent re-implementation of the digest the training log reports."""
    digest = hashlib.sha1()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(str(state[key].dtype).encode())
        digest.update(state[key].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TinyEpsModel(nn.Module):
    """One convolution; returns NaN on the calls listed in `poisoned_calls` (all calls if None)."""

    def __init__(self, poisoned_calls=()):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.poisoned_calls = poisoned_calls
        self.calls = 0

    def forward(self, x, t, **kwargs):
        out = self.conv(x) + 1e-3 * t.float().view(-1, 1, 1, 1)
        poisoned = self.poisoned_calls is None or self.calls in self.poisoned_calls
        self.calls += 1
        return out * float("nan") if poisoned else out


class FixedTimestepSampler(ScheduleSampler):
    def __init__(self, diffusion, t):
        self._weights = np.zeros(diffusion.num_timesteps)
        self._weights[t] = 1.0

    def weights(self):
        return self._weights


def random_batches(batch_size=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1, {}


def tiny_loop(tmp_path, model=None, **kwargs):
    logger.configure(str(tmp_path / "log"))
    diffusion = create_gaussian_diffusion(steps=100)
    args = dict(
        model=model or TinyEpsModel(),
        diffusion=diffusion,
        data=random_batches(),
        batch_size=4,
        lr=1e-2,
        ema_rate="0.5",
        log_interval=1,
        save_interval=1000,
        log_dir=str(tmp_path / "log"),
    )
    args.update(kwargs)
    return TrainLoop(**args)


# ---- data ---------------------------------------------------------------------------------------


def test_listing_is_recursive_sorted_and_sharded_like_adm(class_image_folder, tmp_path):
    expected = sorted(str(p) for p in class_image_folder.rglob("*") if p.suffix in (".png", ".jpg"))
    shards = []
    for rank in range(3):
        data = load_data(data_dir=str(class_image_folder), batch_size=2, image_size=16, num_workers=0, rank=rank, world_size=3)
        shards.append(data.dataset.local_images)
    assert [sorted(s) for s in shards] == [sorted(expected[r::3]) for r in range(3)]
    assert sorted(itertools.chain(*shards)) == expected
    assert shard(list(range(7)), 1, 3) == [1, 4]


def test_batches_are_adm_preprocessed_with_prefix_labels(class_image_folder):
    data = load_data(
        data_dir=str(class_image_folder), batch_size=4, image_size=16, class_cond=True,
        deterministic=True, random_flip=False, num_workers=0,
    )
    images, cond = next(data)
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    files = data.dataset.local_images[:4]
    for i, path in enumerate(files):
        expected = center_crop_arr(Image.open(path).convert("RGB"), 16).astype(np.float32) / 127.5 - 1
        np.testing.assert_allclose(images[i].numpy(), expected.transpose(2, 0, 1), atol=1e-6)
        assert cond["y"][i].item() == ["cat", "dog"].index(Path(path).name.split("_")[0])


def test_random_flip_mirrors_or_keeps_each_image(class_image_folder):
    random.seed(0)
    flipped = load_data(data_dir=str(class_image_folder), batch_size=24, image_size=16, deterministic=True, num_workers=0)
    plain = load_data(data_dir=str(class_image_folder), batch_size=24, image_size=16, deterministic=True, random_flip=False, num_workers=0)
    a, _ = next(flipped)
    b, _ = next(plain)
    mirrored = [torch.equal(x, y.flip(-1)) and not torch.equal(x, y) for x, y in zip(a, b)]
    kept = [torch.equal(x, y) for x, y in zip(a, b)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 0 < sum(mirrored) < 24


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_image_error_names_the_file(image_folder_factory, num_workers):
    root = image_folder_factory(image_names(2))
    (root / "cat_999.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    data = load_data(data_dir=str(root), batch_size=5, image_size=16, deterministic=True, num_workers=num_workers)
    with pytest.raises(ImageLoadError) as info:
        next(data)
    message = str(info.value)
    assert "cat_999.png" in message and "\n" not in message


def test_bad_data_dirs_are_clear_errors(image_folder_factory, tmp_path):
    with pytest.raises(ValueError, match="--data_dir is required"):
        load_data(data_dir="", batch_size=1, image_size=16)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_data(data_dir=str(tmp_path / "missing"), batch_size=1, image_size=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no images"):
        load_data(data_dir=str(empty), batch_size=1, image_size=16)
    unprefixed = image_folder_factory(["a.png", "b.png", "cat_1.png"])
    with pytest.raises(ValueError, match="2 of 3 image names carry no class prefix.*a.png"):
        load_data(data_dir=str(unprefixed), batch_size=1, image_size=16, class_cond=True)
    three_classes = image_folder_factory(["a_1.png", "b_1.png", "c_1.png"])
    with pytest.raises(ValueError, match="3 classes but --num_classes is 2"):
        load_data(data_dir=str(three_classes), batch_size=1, image_size=16, class_cond=True, num_classes=2)
    with pytest.raises(ValueError, match="rank 1 of 2 gets 1 images, fewer than --batch_size 2"):
        load_data(data_dir=str(three_classes), batch_size=2, image_size=16, rank=1, world_size=2)


# ---- checkpoints --------------------------------------------------------------------------------


def test_model_checkpoint_loading_is_strict_and_lists_mismatched_keys(tiny_model_flags, tmp_path):
    flags = {**model_and_diffusion_defaults(), **tiny_model_flags}
    model, _ = create_model_and_diffusion(**flags)
    path = tmp_path / "adm.pt"
    torch.save(model.state_dict(), path)
    other, _ = create_model_and_diffusion(**flags)
    load_model_checkpoint(other, str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))

    deeper, _ = create_model_and_diffusion(**{**flags, "num_res_blocks": 2})
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_checkpoint(deeper, str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "missing key(s): " in message
    missing = set(deeper.state_dict()) - set(model.state_dict())
    assert f"{len(missing)} missing key(s)" in message
    wider, _ = create_model_and_diffusion(**{**flags, "num_channels": 64})
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch\(es\): .*input_blocks.0.0.weight \(32, 3, 3, 3\) vs model \(64, 3, 3, 3\)"):
        load_model_checkpoint(wider, str(path))


def test_latest_checkpoint_skips_incomplete_sets(tmp_path):
    state = {"w": torch.ones(2)}
    for step in (10, 20, 30):
        save_checkpoint(str(tmp_path), step, model_state=state, ema_states={0.9999: state}, opt_state={}, manifest={})
    (tmp_path / "ema_0.9999_000030.pt").unlink()
    save_checkpoint(str(tmp_path), 40, model_state=state, ema_states={0.9999: state}, opt_state={}, manifest={})
    (tmp_path / "checkpoint000040.json").unlink()
    point = find_latest_checkpoint(str(tmp_path))
    assert point.step == 20 and point.model_path.endswith("model000020.pt")
    assert point.ema_paths == {"0.9999": str(tmp_path / "ema_0.9999_000020.pt")}


def test_failed_checkpoint_write_leaves_no_file(tmp_path, monkeypatch):
    def torch_save_that_crashes(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torch_save_that_crashes)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(tmp_path), 5, model_state={}, ema_states={}, opt_state={}, manifest={})
    assert os.listdir(tmp_path) == []


# ---- mixed precision ----------------------------------------------------------------------------


def test_precision_flags():
    assert resolve_precision("", True) == "fp16"
    assert resolve_precision("", False) == "fp32"
    assert resolve_precision("bf16", False) == "bf16"
    with pytest.raises(ValueError, match="--use_fp16 True conflicts with --precision bf16"):
        resolve_precision("bf16", True)
    with pytest.raises(ValueError, match="unknown --precision 'fp8'"):
        resolve_precision("fp8", False)


def test_fp16_dynamic_loss_scaling_unscales_skips_and_keeps_master_weights(tiny_model_flags):
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny_model_flags, "use_fp16": True})
    trainer = MixedPrecisionTrainer(model=model, precision="fp16", fp16_scale_growth=0.25, initial_lg_loss_scale=8.0)
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in trainer.master_params)
    opt = torch.optim.AdamW(trainer.master_params, lr=1e-3)
    reference = [p.detach().clone().requires_grad_(True) for p in trainer.master_params]
    reference_opt = torch.optim.AdamW(reference, lr=1e-3)

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = diffusion.training_losses(model, x, torch.tensor([5, 80]))["loss"].mean()
    trainer.backward(loss)
    expected_grads = [None if p.grad is None else p.grad.float() / 2**8 for p in trainer.model_params]
    took, grad_norm = trainer.optimize(opt)
    assert took and trainer.lg_loss_scale == 8.25
    for r, g in zip(reference, expected_grads):
        r.grad = g
    reference_opt.step()
    for master, ref, param in zip(trainer.master_params, reference, trainer.model_params):
        torch.testing.assert_close(master, ref, rtol=0, atol=0)
        torch.testing.assert_close(param, ref.detach().to(param.dtype), rtol=0, atol=0)
    assert grad_norm == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in expected_grads if g is not None))), rel=1e-5)

    before = [p.detach().clone() for p in trainer.master_params]
    trainer.backward(diffusion.training_losses(model, x, torch.tensor([5, 80]))["loss"].mean())
    trainer.model_params[0].grad[0] = float("inf")
    took, grad_norm = trainer.optimize(opt)
    assert not took and not np.isfinite(grad_norm) and trainer.lg_loss_scale == 7.25
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.master_params))
    assert all(p.grad is None for p in trainer.model_params)


def test_bf16_runs_the_forward_pass_in_bfloat16(tiny_model_flags):
    model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny_model_flags})
    trainer = MixedPrecisionTrainer(model=model, precision="bf16")
    dtypes = []
    model.input_blocks[0][0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with trainer.autocast():
        losses = diffusion.training_losses(model, torch.zeros(2, 3, 16, 16), torch.tensor([1, 50]))
    assert dtypes == [torch.bfloat16] and losses["loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---- the loop -----------------------------------------------------------------------------------


def test_microbatches_give_the_gradient_of_the_batch_mean(tmp_path):
    class FixedNoiseDiffusion:
        """The real diffusion with noise fixed by the input, so both runs see the same noise."""

        def __init__(self, diffusion):
            self.inner = diffusion
            self.num_timesteps = diffusion.num_timesteps

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def training_losses(self, model, x, t, model_kwargs=None):
            return self.inner.training_losses(model, x, t, model_kwargs, noise=torch.sin(1000 * x))

    torch.manual_seed(0)
    model = TinyEpsModel()
    diffusion = FixedNoiseDiffusion(create_gaussian_diffusion(steps=100))
    batch = next(random_batches())
    grads = []
    for microbatch in (4, 1):
        loop = tiny_loop(
            tmp_path, model=copy.deepcopy(model), diffusion=diffusion, microbatch=microbatch,
            schedule_sampler=FixedTimestepSampler(diffusion, 37),
        )
        loop.forward_backward(*batch)
        grads.append([p.grad.clone() for p in loop.mp_trainer.master_params])
    for full, micro in zip(*grads):
        torch.testing.assert_close(micro, full, rtol=1e-5, atol=1e-7)


def test_ema_follows_its_recurrence(tmp_path):
    loop = tiny_loop(tmp_path, ema_rate="0.5,0.9")
    expected = {rate: [p.detach().clone() for p in loop.mp_trainer.master_params] for rate in (0.5, 0.9)}
    data = random_batches(seed=1)
    for _ in range(3):
        loop.run_step(*next(data))
        for rate, params in expected.items():
            for e, p in zip(params, loop.mp_trainer.master_params):
                e.copy_(rate * e + (1 - rate) * p.detach())
    for rate in (0.5, 0.9):
        for e, got in zip(expected[rate], loop.ema_params[rate]):
            torch.testing.assert_close(got, e)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.999])
def test_ema_warmup_decay_is_the_tf_formula_capped_at_the_rate(rate):
    for n in [0, 1, 5, 9, 50, 1000, 20000]:
        assert ema_decay(rate, n, warmup=True) == pytest.approx(min(rate, (1 + n) / (10 + n)), abs=0)
        assert ema_decay(rate, n, warmup=False) == rate
    # The cap is reached exactly where (1 + n) / (10 + n) = rate.
    first_full = next(n for n in range(100000) if ema_decay(rate, n, warmup=True) == rate)
    assert first_full == int(np.ceil((10 * rate - 1) / (1 - rate) - 1e-9))


def test_ema_warmup_keeps_its_recurrence_across_a_resume(tmp_path):
    """Every saved EMA equals d(n) * previous EMA + (1 - d(n)) * model, with n the iterations before the update,
    including the first update after a resume at step 3 (the counter is restored, not restarted)."""
    log_dir = tmp_path / "log"
    run = dict(ema_rate="0.999", ema_warmup=True, save_interval=1, log_dir=str(log_dir))
    tiny_loop(tmp_path, max_steps=3, **run).run_loop()
    torch.manual_seed(1)
    resumed = tiny_loop(tmp_path, model=TinyEpsModel(), max_steps=6, resume_checkpoint="auto", **run)
    assert resumed.step == 3
    resumed.data = random_batches(seed=2)
    resumed.run_loop()
    assert json.loads((log_dir / "checkpoint000006.json").read_text())["ema_warmup"] is True
    for step in range(2, 7):
        previous = torch.load(log_dir / f"ema_0.999_{step - 1:06d}.pt")
        model = torch.load(log_dir / f"model{step:06d}.pt")
        ema = torch.load(log_dir / f"ema_0.999_{step:06d}.pt")
        decay = (1 + (step - 1)) / (10 + (step - 1))
        for key in ema:
            torch.testing.assert_close(ema[key], decay * previous[key] + (1 - decay) * model[key], rtol=0, atol=1e-6)


def test_loss_is_logged_per_quartile_of_t(tmp_path):
    loop = tiny_loop(tmp_path)
    t = torch.tensor([0, 10, 30, 60, 74, 75, 99])
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    loop._log_losses(t, {"loss": values})
    row = logger.dumpkvs()
    assert row["loss"] == pytest.approx(values.mean().item())
    for q, members in enumerate([[1.0, 2.0], [3.0], [4.0, 5.0], [6.0, 7.0]]):
        assert row[f"loss_q{q}"] == pytest.approx(np.mean(members))


def test_lr_anneals_linearly_and_stops_the_run(tmp_path):
    loop = tiny_loop(tmp_path, lr=1e-3, lr_anneal_steps=4)
    loop.run_loop()
    rows = read_progress(tmp_path / "log")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([float(r["lr"]) for r in rows], [1e-3 * (1 - s / 4) for s in range(4)])
    assert (tmp_path / "log" / "model000004.pt").exists()
    log = (tmp_path / "log" / "log.txt").read_text()
    assert "training step 2/4 (50%)" in log and "training step 4/4 (100%)" in log


def test_a_non_finite_step_is_skipped_with_a_warning(tmp_path):
    loop = tiny_loop(tmp_path, model=TinyEpsModel(poisoned_calls={1}))
    data = random_batches()
    assert loop.run_step(*next(data))
    before = [p.detach().clone() for p in loop.mp_trainer.master_params]
    ema_before = [p.clone() for p in loop.ema_params[0.5]]
    assert not loop.run_step(*next(data))
    assert all(torch.equal(a, b) for a, b in zip(before, loop.mp_trainer.master_params))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, loop.ema_params[0.5]))
    assert loop.run_step(*next(data))
    assert loop.step == 3 and loop._consecutive_nonfinite == 0
    log = (tmp_path / "log" / "log.txt").read_text()
    assert "WARNING: step 2: non-finite loss or gradient, update skipped (1 in a row)" in log


def test_training_stops_after_100_consecutive_non_finite_steps(tmp_path):
    loop = tiny_loop(tmp_path, model=TinyEpsModel(poisoned_calls=None), max_steps=1000)
    initial = [p.detach().clone() for p in loop.mp_trainer.master_params]
    with pytest.raises(TrainingError, match="stopped at step 100: 100 consecutive steps had a non-finite loss"):
        loop.run_loop()
    assert all(torch.equal(a, b) for a, b in zip(initial, loop.mp_trainer.master_params))
    assert (tmp_path / "log" / "log.txt").read_text().count("non-finite loss or gradient, update skipped") == 100


def test_progress_csv_grows_its_header_for_new_keys(tmp_path):
    logger.configure(str(tmp_path))
    logger.logkv("a", 1)
    logger.dumpkvs()
    logger.logkv("a", 2)
    logger.logkv_mean("b", 3.0)
    logger.logkv_mean("b", 5.0)
    logger.dumpkvs()
    logger.close()
    assert (tmp_path / "progress.csv").read_text().splitlines() == ["a,b", "1,", "2,4.0"]


def test_resume_restores_model_ema_optimizer_step_and_sampler(tiny_model_flags, class_image_folder, tmp_path):
    flags = training_flags(tiny_model_flags, class_image_folder, tmp_path / "run", max_steps=4, schedule_sampler="loss-second-moment")
    first = train(flags)
    manifest = json.loads((tmp_path / "run" / "checkpoint000004.json").read_text())
    assert manifest["step"] == 4 and manifest["world_size"] == 1 and manifest["samples"] == 8
    assert manifest["flags"]["lr"] == 1e-3 and manifest["package_version"]

    model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny_model_flags})
    logger.configure(str(tmp_path / "run"))
    from guided_diffusion.resample import create_named_schedule_sampler

    loop = TrainLoop(
        model=model, diffusion=diffusion, data=None, batch_size=2, lr=1e-3,
        schedule_sampler=create_named_schedule_sampler("loss-second-moment", diffusion),
        resume_checkpoint="auto", log_dir=str(tmp_path / "run"),
    )
    assert loop.step == 4 and loop.samples == 8
    for a, b in zip(loop.mp_trainer.master_params, first.mp_trainer.master_params):
        assert torch.equal(a, b)
    for a, b in zip(loop.ema_params[0.9999], first.ema_params[0.9999]):
        assert torch.equal(a, b)
    for a, b in zip(loop.opt.state_dict()["state"].values(), first.opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and int(a["step"]) == int(b["step"]) == 4
    resumed_sampler, first_sampler = loop.schedule_sampler.state_dict(), first.schedule_sampler.state_dict()
    assert np.array_equal(resumed_sampler["loss_history"], first_sampler["loss_history"])
    assert resumed_sampler["loss_counts"].sum() == 8

    train({**flags, "max_steps": 6, "resume_checkpoint": "auto"})
    rows = read_progress(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["samples"]) for r in rows] == [2, 4, 6, 8, 10, 12]


def test_resume_from_another_architecture_lists_the_keys(tiny_model_flags, class_image_folder, tmp_path):
    flags = training_flags(tiny_model_flags, class_image_folder, tmp_path / "run")
    train(flags)
    with pytest.raises(CheckpointMismatchError, match=r"model000002.pt does not fit the model .*missing key\(s\): .*input_blocks"):
        # Allowed, so that the architecture change gets as far as the weights (refused before that otherwise).
        train({**flags, "num_res_blocks": 2, "resume_checkpoint": "auto", "max_steps": 4, "allow_changed_flags": "num_res_blocks"})


def test_fp16_and_bf16_training_write_float32_adm_checkpoints(tiny_model_flags, class_image_folder, tmp_path):
    for precision in ("fp16", "bf16"):
        log_dir = tmp_path / precision
        loop = train(training_flags(tiny_model_flags, class_image_folder, log_dir, precision=precision, max_steps=3, save_interval=3))
        rows = read_progress(log_dir)
        taken = sum(1 - int(r["skipped_steps"]) for r in rows)
        if precision == "fp16":
            assert float(rows[-1]["lg_loss_scale"]) == pytest.approx(20 - (3 - taken) + 0.001 * taken)
        assert taken > 0 and all(np.isfinite(float(r["loss"])) for r in rows if int(r["skipped_steps"]) == 0)
        state = torch.load(log_dir / "model000003.pt")
        assert all(v.dtype == torch.float32 for v in state.values())
        model, _ = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny_model_flags})
        model.load_state_dict(state, strict=True)
        assert loop.mp_trainer.precision == precision


def test_config_with_an_unknown_key_is_a_one_line_error(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("image_train", REPO / "scripts" / "image_train.py")
    image_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_train)
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nlr = 2e-5\nlearning_rate = 1e-4\n")
    assert image_train.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key(s) learning_rate" in err


def test_dataset_configs_hold_the_papers_setup():
    from guided_diffusion.script_util import load_config
    from guided_diffusion.train_util import image_train_defaults

    for name, size, classes in [("ffhq", 256, None), ("celebahq", 256, None), ("afhq_dog", 256, None),
                                ("metfaces", 256, None), ("cifar10", 32, 10), ("imagenet", 256, 1000)]:
        c = load_config(REPO / "configs" / f"{name}.toml", image_train_defaults(), sections=("model", "diffusion", "train"))
        assert (c["image_size"], c.get("num_classes"), c["class_cond"]) == (size, classes, classes is not None)
        assert (c["num_channels"], c["num_res_blocks"], c["attention_resolutions"], c["num_head_channels"]) == (128, 1, "16", 64)
        assert c["resblock_updown"] and c["use_scale_shift_norm"] and c["learn_sigma"] and c["dropout"] == 0.0
        assert (c["noise_schedule"], c["diffusion_steps"], c["lr"], c["max_steps"], c["ema_rate"]) == ("linear", 1000, 2e-5, 500000, "0.9999")
        assert c["batch_size"] == 1  # per rank: the paper's total batch of 8 on 8 ranks


def test_remote_log_dir_is_staged_locally_and_uploaded_on_sync(tmp_path, monkeypatch):
    # blobfile treats local paths like bucket URLs; only the "can't append" decision is forced here.
    monkeypatch.setattr(logger, "is_remote", lambda path: True)
    remote = tmp_path / "bucket"
    remote.mkdir()
    (remote / "log.txt").write_text("earlier run\n")
    log = logger.configure(str(remote))
    assert log._local_dir != str(remote)
    logger.log("resumed")
    logger.logkv("step", 7)
    logger.dumpkvs()
    assert (remote / "log.txt").read_text() == "earlier run\n" and not (remote / "progress.csv").exists()
    logger.sync()
    text = (remote / "log.txt").read_text()
    assert text.startswith("earlier run\nresumed\n") and "| step | 7 |" in text
    assert (remote / "progress.csv").read_text() == "step\n7\n"
    logger.close()
