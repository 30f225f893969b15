"""Fast paths on CPU: each is off by default, and each gives the default run's numbers (to rounding) when on.

torch.compile runs with the `aot_eager` backend here (Dynamo and AOTAutograd, the
same aten ops as eager), because Inductor's C++ code generation takes about a minute
on this machine before the first step; one test (marked slow) compiles with Inductor.
The CUDA side (CUDA graphs, fused kernels, NCCL) is in test_cuda.py.
"""

import copy
import csv
import json

import numpy as np
import pytest
import torch

from guided_diffusion import dist_util, sampling
from guided_diffusion.run import fast_paths
from guided_diffusion.run.fast_paths import FastPathOptions, PrefetchedIndexedNoise, largest_fitting_batch
from guided_diffusion.noise import IndexedNoise
from guided_diffusion.script_util import create_model_and_diffusion
from guided_diffusion.train_util import TrainLoop, train, training_defaults
from scripts import image_sample, image_train
from tests.test_sampling import assert_same_up_to_rounding, run_library, save_tiny_checkpoint
from tests.tiny import TINY_8X8, TINY_MODEL_FLAGS, tiny_flags


def read_progress(log_dir):
    with open(log_dir / "progress.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("fast_paths") / "model.pt")


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory):
    """Default flags: 10 samples in batches of 3."""
    _, data = run_library(checkpoint, tmp_path_factory.mktemp("reference"))
    return data["arr_0"]


def perturbed_tiny_unet(seed=0, **overrides):
    """The tiny UNet with every weight moved off ADM's zero initialisation, so every layer shows in the output."""
    torch.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**tiny_flags(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, diffusion


def training_run_flags(data_dir, log_dir, **overrides):
    flags = dict(TINY_MODEL_FLAGS, data_dir=str(data_dir), log_dir=str(log_dir), batch_size=2, lr=1e-3, num_workers=0,
                 log_interval=1, save_interval=2, max_steps=2, seed=0)
    return {**flags, **overrides}


def assert_same_runs(log_a, log_b, step, lr=1e-3):
    """The same losses and gradient norms at every step, and the same checkpoints up to Adam's rounding.

    Adam divides by sqrt(v): an element whose gradient is about eps (zero-initialised
    output layers early on) moves by an amount that rounding decides, at most lr per
    step. All other elements agree to 1e-6.
    """
    rows_a, rows_b = read_progress(log_a), read_progress(log_b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([float(r[key]) for r in rows_b], [float(r[key]) for r in rows_a], rtol=1e-5)
    for name in (f"model{step:06d}.pt", f"ema_0.9999_{step:06d}.pt"):
        a, b = torch.load(log_a / name), torch.load(log_b / name)
        assert a.keys() == b.keys()
        assert all(b[key].stride() == torch.empty(b[key].shape).stride() for key in b), "not in the default layout"
        difference = torch.cat([(a[key] - b[key]).abs().flatten() for key in a])
        assert difference.max() <= 2 * lr * step, name
        assert (difference > 1e-6).float().mean() < 1e-3, name


# ---- defaults -----------------------------------------------------------------------------------


def test_every_fast_path_is_off_by_default(tiny_model_flags):
    assert {k: training_defaults()[k] for k in fast_paths.training_flag_defaults()} == dict(
        channels_last=False, compile=False, compile_mode="default", optimizer_impl="default"
    )
    sampling_defaults = sampling.sampling_defaults()
    assert {k: sampling_defaults[k] for k in fast_paths.sampling_flag_defaults()} == dict(
        channels_last=False, compile=False, compile_mode="default", cuda_graphs=False, noise_threads=0
    )
    assert fast_paths.parse_batch_size(sampling_defaults["batch_size"]) == 16
    model, diffusion = create_model_and_diffusion(**tiny_flags())
    loop = TrainLoop(model=model, diffusion=diffusion, data=None, batch_size=2, lr=1e-3)
    # ADM's optimizer exactly: torch.optim.AdamW with torch's own choice of implementation.
    assert type(loop.opt) is torch.optim.AdamW
    assert loop.opt.defaults["foreach"] is None and loop.opt.defaults["fused"] is None
    assert all(p.is_contiguous() for p in model.parameters())
    assert fast_paths.sampling_forward(model, "fp32", torch.device("cpu"), FastPathOptions()) is model
    assert fast_paths.noise_source_factory(FastPathOptions(), torch.device("cpu")) is IndexedNoise


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(compile=True, compile_mode="fastest"), "unknown --compile_mode 'fastest'"),
        (dict(compile_mode="max-autotune"), "--compile_mode max-autotune needs --compile True"),
        (dict(optimizer_impl="apex"), "unknown --optimizer_impl 'apex'"),
        (dict(noise_threads=-1), "--noise_threads must be 0"),
        (dict(cuda_graphs=True), "--cuda_graphs True needs a CUDA device; this run is on cpu"),
    ],
)
def test_bad_fast_path_flags_are_one_line_errors(flags, message):
    with pytest.raises(ValueError, match=message) as error:
        FastPathOptions.from_flags(flags, "cpu")
    assert "\n" not in str(error.value)


def test_scripts_take_the_flags_and_refuse_bad_values(tmp_path, capsys):
    flags = image_sample.parse_flags(["--batch_size", "auto", "--channels_last", "True", "--noise_threads", "2"])
    assert (flags["batch_size"], flags["channels_last"], flags["noise_threads"]) == ("auto", True, 2)
    flags = image_train.parse_flags(["--compile", "True", "--compile_mode", "max-autotune", "--optimizer_impl", "fused"])
    assert (flags["compile"], flags["compile_mode"], flags["optimizer_impl"]) == (True, "max-autotune", "fused")
    assert image_train.main(["--data_dir", str(tmp_path), "--optimizer_impl", "apex"]) == 1
    assert image_sample.main(["--model_path", "m.pt", "--out_dir", str(tmp_path), "--batch_size", "many"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("image_train.py: error: unknown --optimizer_impl 'apex'")
    assert err[1] == "image_sample.py: error: bad --batch_size 'many': expected a positive integer or auto"


# ---- channels_last ------------------------------------------------------------------------------


def test_channels_last_forward_and_backward_match_the_default_layout():
    model, _ = perturbed_tiny_unet()
    nhwc = fast_paths.use_channels_last(copy.deepcopy(model))
    fast_paths.use_channels_last(nhwc)  # a second call changes nothing
    assert nhwc.state_dict().keys() == model.state_dict().keys()
    assert nhwc.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    nhwc.input_blocks[0][0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x, t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 40, 99])
    expected, got = model(x, t), nhwc(x, t)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.abs().mean() > 0.1
    expected.square().mean().backward()
    got.square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), nhwc.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_channels_last_and_foreach_adamw_training_matches_the_default_across_a_resume(class_image_folder, tmp_path):
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    train(training_run_flags(class_image_folder, plain))
    train(training_run_flags(class_image_folder, fast, channels_last=True, optimizer_impl="foreach"))
    assert_same_runs(plain, fast, 2)
    # The optimizer state comes back in the default layout and is given the parameters' strides again.
    train(training_run_flags(class_image_folder, plain, max_steps=3, resume_checkpoint="auto"))
    loop = train(training_run_flags(class_image_folder, fast, max_steps=3, resume_checkpoint="auto",
                                    channels_last=True, optimizer_impl="foreach"))
    assert_same_runs(plain, fast, 3)
    assert loop.opt.defaults["foreach"] is True
    assert loop.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    for param in loop.mp_trainer.master_params:
        assert loop.opt.state[param]["exp_avg"].stride() == param.stride()
    manifest = json.loads((fast / "checkpoint000003.json").read_text())
    assert manifest["flags"]["channels_last"] is True and manifest["flags"]["optimizer_impl"] == "foreach"


def test_channels_last_sampling_gives_the_default_images(checkpoint, reference, tmp_path):
    _, data = run_library(checkpoint, tmp_path, channels_last=True)
    assert_same_up_to_rounding(data["arr_0"], reference)


# ---- AdamW --------------------------------------------------------------------------------------


def adamw_trajectories(impls, device, shapes=((8, 4, 3, 3), (8,), (5, 7)), steps=5):
    """(start, {impl: parameters after `steps` AdamW steps}) from the same start and gradients."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator).to(device) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator).to(device) for shape in shapes] for _ in range(steps)]
    results = {}
    for impl in impls:
        params = [p.clone().requires_grad_(True) for p in start]
        optimizer = fast_paths.make_adamw(params, lr=1e-2, weight_decay=0.1, impl=impl)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        results[impl] = params
    return start, results


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_foreach_and_fused_adamw_take_the_default_steps(impl):
    start, results = adamw_trajectories(("default", impl), torch.device("cpu"))
    for a, b, before in zip(results["default"], results[impl], start):
        assert not torch.equal(a, before)
        # foreach runs the same arithmetic on lists of tensors; fused reorders a few operations.
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7 if impl == "fused" else 0)


# ---- torch.compile ------------------------------------------------------------------------------


@pytest.fixture
def one_rank_group():
    """A one-member gloo group, as the training script has, so that training goes through DDP."""
    dist_util.setup_dist()
    yield
    dist_util.cleanup()


def test_compiled_training_matches_eager_through_ddp(class_image_folder, tmp_path, monkeypatch, one_rank_group):
    monkeypatch.setattr(fast_paths, "COMPILE_BACKEND", "aot_eager")
    overrides = dict(TINY_8X8, max_steps=1, save_interval=1)
    eager = train(training_run_flags(class_image_folder, tmp_path / "eager", **overrides))
    compiled = train(training_run_flags(class_image_folder, tmp_path / "compiled", compile=True, **overrides))
    assert type(compiled.ddp_model).__name__ == "DistributedDataParallel"
    assert compiled.ddp_model._compiled_call_impl is not None and eager.ddp_model._compiled_call_impl is None
    assert_same_runs(tmp_path / "eager", tmp_path / "compiled", 1)


@pytest.mark.slow
def test_inductor_compiled_unet_matches_eager():
    model, _ = perturbed_tiny_unet(**TINY_8X8)
    model.eval()
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([3, 70])
    with torch.no_grad():
        expected = model(x, t)
        forward = fast_paths.sampling_forward(model, "fp32", torch.device("cpu"), FastPathOptions(compile=True))
        got = forward(x, t)
    assert model._compiled_call_impl is not None
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---- --batch_size auto --------------------------------------------------------------------------


def test_batch_search_doubles_until_out_of_memory_then_bisects():
    probes = []

    def fits(batch):
        probes.append(batch)
        return batch <= 37

    found = largest_fitting_batch(fits, limit=1000)
    assert probes[:7] == [1, 2, 4, 8, 16, 32, 64] and probes[7] == 48
    assert 37 - 37 * fast_paths.AUTO_BATCH_RESOLUTION <= found <= 37 and fits(found)
    probes.clear()
    assert largest_fitting_batch(lambda b: probes.append(b) or True, limit=40) == 40
    assert probes == [1, 2, 4, 8, 16, 32, 40]
    with pytest.raises(ValueError, match="not even a batch of 1 fits"):
        largest_fitting_batch(lambda b: False, limit=8)


def test_out_of_memory_in_the_probe_means_does_not_fit():
    calls = []

    def forward(x, t, **kwargs):
        calls.append((x.shape[0], sorted(kwargs)))
        if x.shape[0] > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return x

    cpu = torch.device("cpu")
    assert fast_paths.forward_fits(forward, 5, (3, 8, 8), None, cpu)
    assert not fast_paths.forward_fits(forward, 6, (3, 8, 8), 10, cpu)
    assert calls == [(5, []), (6, ["y"])]
    found = largest_fitting_batch(lambda b: fast_paths.forward_fits(forward, b, (3, 8, 8), None, cpu), limit=64)
    assert found == 5


def test_auto_batch_size_on_cpu_is_the_default_capped_by_the_samples(checkpoint, reference, tmp_path, capsys):
    _, data = run_library(checkpoint, tmp_path, batch_size="auto")
    assert "--batch_size auto: 10 on cpu" in capsys.readouterr().out
    assert json.loads((tmp_path / "sampling.json").read_text())["flags"]["batch_size"] == 10
    assert_same_up_to_rounding(data["arr_0"], reference)
    assert fast_paths.auto_batch_size(None, {}, torch.device("cpu"), limit=1000) == fast_paths.CPU_AUTO_BATCH_SIZE
    assert fast_paths.per_rank_limit(10, 4) == 3


# ---- noise drawn ahead --------------------------------------------------------------------------


def test_prefetched_noise_draws_the_numbers_of_indexed_noise():
    indices = [3, 17, 4, 250, 9]
    plain, ahead = IndexedNoise(5, indices), PrefetchedIndexedNoise(5, indices, threads=2)
    # The same shape three times (served from the prefetch), then another shape (rewound), then back.
    for shape in [(5, 3, 4, 4)] * 3 + [(5, 2, 6, 6), (5, 2, 6, 6), (5, 3, 4, 4)]:
        like = torch.empty(shape, dtype=torch.float64)
        expected, got = plain.randn_like(like), ahead.randn_like(like)
        assert got.dtype == torch.float64 and torch.equal(got, expected)
    with pytest.raises(ValueError, match="batch of 4 but noise for 5 indices"):
        ahead.randn_like(torch.empty(4, 3))


def test_sampling_with_noise_threads_gives_the_same_images(checkpoint, reference, tmp_path):
    _, data = run_library(checkpoint, tmp_path, noise_threads=2)
    np.testing.assert_array_equal(data["arr_0"], reference)
    assert json.loads((tmp_path / "sampling.json").read_text())["flags"]["noise_threads"] == 2
