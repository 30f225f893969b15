"""What has to hold on a GPU: `make test-cuda`. Without CUDA every test here is skipped (and `make test` leaves them out).

Stated tolerances, against float32 on the same GPU with TF32 off, for the UNet below:
- float32 on CUDA against the CPU: relative RMS error of outputs and gradients below 1e-4;
- fp16 (ADM's float16 torso, float32 master weights, dynamic loss scaling): outputs within 1e-2,
  unscaled master gradients within 3e-2 (relative RMS);
- bf16 autocast: outputs within 3e-2, gradients within 6e-2 (bfloat16 keeps 8 mantissa bits, float16 11).
Fast paths (channels_last, torch.compile, fused AdamW, CUDA graphs) give the eager float32 numbers to
the same float32 tolerance, and samples within one uint8 level.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.run import fast_paths
from guided_diffusion.run.fast_paths import FastPathOptions
from guided_diffusion.fp16_util import MixedPrecisionTrainer
from guided_diffusion.script_util import create_model_and_diffusion
from tests.test_evaluations import (  # noqa: F401  (session fixtures: the converted FID Inception)
    converted_weights,
    fid_by_nuclear_norm,
    synthetic_photos,
    torchscript_path,
    with_noise,
)
from tests.test_fast_paths import adamw_trajectories
from tests.test_sampling import assert_same_up_to_rounding, run_library, sampling_flags, save_tiny_checkpoint
from scripts.benchmarks.gpu_check_base import subprocess_env
from tests.tiny import TINY_MODEL_FLAGS, flag_list, tiny_flags

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run make test-cuda on a GPU machine)"),
]

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")
# Big enough that float16 and bfloat16 rounding accumulates as in a real model: 32x32, 64 channels, three resolutions.
MODEL = dict(TINY_MODEL_FLAGS, image_size=32, num_channels=64, channel_mult="1,2,2", attention_resolutions="16,8",
             num_head_channels=32)


@pytest.fixture(scope="module", autouse=True)
def exact_float32():
    """TF32 off: float32 means float32 in these comparisons (PyTorch turns it on for cuDNN convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def child_env(**extra):
    """A child process's environment: the repository and, where this process uses it, the blobfile stand-in."""
    return dict(subprocess_env(), **extra)


def installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # hidden by tests/without_modules.py
        return False


def relative_rms(got, expected):
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    return float((got - expected).norm() / expected.norm())


def perturbed_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**tiny_flags(**{**MODEL, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, diffusion


def batch(size=4, image_size=32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 3, image_size, image_size, generator=generator) * 2 - 1
    t = torch.randint(0, 100, (size,), generator=generator)
    noise = torch.randn(x.shape, generator=generator)
    return x, t, noise


def forward_backward(model, diffusion, device, precision="fp32", fast=FastPathOptions()):
    """Output and unscaled float32 gradients of the training loss (the trainer's own autocast and loss scale)."""
    model = model.to(device)
    fast_paths.prepare_training_model(model, fast)
    trainer = MixedPrecisionTrainer(model=model, precision=precision, initial_lg_loss_scale=12.0)
    fast_paths.compile_training_model(model, fast)
    x, t, noise = (v.to(device) for v in batch())
    with trainer.autocast():
        output = model(x, t).float()
        loss = diffusion.training_losses(model, x, t, noise=noise)["loss"].mean()
    trainer.backward(loss)
    trainer._master_grads()
    return output, [p.grad.float() for p in trainer.master_params]


@pytest.fixture(scope="module")
def fp32_on_cuda():
    model, diffusion = perturbed_model()
    return forward_backward(model, diffusion, CUDA)


def assert_gradients_close(got, expected, tolerance):
    error = relative_rms(torch.cat([g.flatten() for g in got]), torch.cat([g.flatten() for g in expected]))
    assert error < tolerance, error


# ---- precisions ---------------------------------------------------------------------------------


def test_float32_on_cuda_matches_the_cpu(fp32_on_cuda):
    model, diffusion = perturbed_model()
    output, grads = forward_backward(model, diffusion, torch.device("cpu"))
    assert relative_rms(fp32_on_cuda[0], output) < 1e-4
    assert_gradients_close(fp32_on_cuda[1], grads, 1e-4)


@pytest.mark.parametrize("precision, output_tolerance, gradient_tolerance", [("fp16", 1e-2, 3e-2), ("bf16", 3e-2, 6e-2)])
def test_reduced_precision_forward_and_backward_against_float32(fp32_on_cuda, precision, output_tolerance, gradient_tolerance):
    model, diffusion = perturbed_model(use_fp16=precision == "fp16")
    output, grads = forward_backward(model, diffusion, CUDA, precision)
    error = relative_rms(output, fp32_on_cuda[0])
    # Not bit-identical: a precision flag that was silently ignored would give error 0.
    assert 0 < error < output_tolerance, error
    assert_gradients_close(grads, fp32_on_cuda[1], gradient_tolerance)


def test_fp16_loss_scale_backs_off_from_overflow_and_keeps_float32_masters():
    model, diffusion = perturbed_model(use_fp16=True)
    model.to(CUDA)
    # 2^40 overflows float16 gradients: each skipped step halves the scale until one is taken.
    trainer = MixedPrecisionTrainer(model=model, precision="fp16", initial_lg_loss_scale=40.0, fp16_scale_growth=0.0)
    optimizer = torch.optim.AdamW(trainer.master_params, lr=1e-4)
    x, t, noise = (v.to(CUDA) for v in batch())
    before = [p.detach().clone() for p in trainer.master_params]
    skipped = 0
    while True:
        trainer.backward(diffusion.training_losses(model, x, t, noise=noise)["loss"].mean())
        took, grad_norm = trainer.optimize(optimizer)
        if took:
            break
        skipped += 1
        assert all(torch.equal(a, b) for a, b in zip(before, trainer.master_params)) and skipped < 40
    assert skipped > 0 and trainer.lg_loss_scale == 40.0 - skipped and np.isfinite(grad_norm)
    assert all(m.dtype == torch.float32 for m in trainer.master_params)
    torch_params = dict(zip(trainer.param_names, trainer.model_params))
    assert torch_params["input_blocks.1.0.in_layers.2.weight"].dtype == torch.float16
    for master, param in zip(trainer.master_params, trainer.model_params):
        assert torch.equal(param, master.to(param.dtype))


# ---- fast paths on CUDA -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fast",
    [FastPathOptions(channels_last=True), FastPathOptions(compile=True), FastPathOptions(channels_last=True, compile=True)],
    ids=["channels_last", "compile", "channels_last+compile"],
)
def test_fast_paths_give_the_eager_float32_numbers(fp32_on_cuda, fast):
    model, diffusion = perturbed_model()
    output, grads = forward_backward(model, diffusion, CUDA, fast=fast)
    assert relative_rms(output, fp32_on_cuda[0]) < 1e-4
    assert_gradients_close(grads, fp32_on_cuda[1], 1e-4)


def test_fused_adamw_takes_the_default_steps_on_cuda():
    _, results = adamw_trajectories(("default", "foreach", "fused"), CUDA, shapes=((64, 32, 3, 3), (64,), (10, 7)))
    for impl in ("foreach", "fused"):
        for a, b in zip(results["default"], results[impl]):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


# ---- training under torchrun with NCCL ----------------------------------------------------------


def torchrun_training(args, timeout=600):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(REPO / "scripts" / "image_train.py")] + flag_list(TINY_MODEL_FLAGS) + [str(a) for a in args]
    result = subprocess.run(command, cwd=REPO, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_one_rank_nccl_training_resumes_with_fast_paths(image_folder_factory, tmp_path):
    data = image_folder_factory([f"img_{i:03d}.png" for i in range(16)], size=(16, 16))
    run = tmp_path / "run"
    common = ["--data_dir", data, "--log_dir", run, "--batch_size", 4, "--lr", 1e-3, "--log_interval", 1,
              "--save_interval", 4, "--num_workers", 1, "--precision", "bf16"]
    torchrun_training(common + ["--max_steps", 4])
    torchrun_training(common + ["--max_steps", 8, "--resume_checkpoint", "auto", "--channels_last", "True",
                                "--optimizer_impl", "fused", "--compile", "True"])
    log = (run / "log.txt").read_text()
    assert log.count("(torchrun, cuda:0)") == 2 and f"resuming from {run / 'model000004.pt'} at step 4" in log
    with open(run / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    manifest = json.loads((run / "checkpoint000008.json").read_text())
    assert manifest["world_size"] == 1 and manifest["flags"]["optimizer_impl"] == "fused"
    model, _ = create_model_and_diffusion(**tiny_flags())
    state = torch.load(run / "model000008.pt")
    model.load_state_dict(state, strict=True)
    assert all(v.dtype == torch.float32 and v.stride() == torch.empty(v.shape).stride() for v in state.values())


# ---- sampling -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_sampling")
    checkpoint = save_tiny_checkpoint(root / "model.pt")
    # CPU noise: the reference the CPU run and the fast paths are compared with.
    result, data = run_library(checkpoint, root / "reference", noise_device="cpu")
    # Noise drawn on the GPU, the default on CUDA.
    device_result, device_data = run_library(checkpoint, root / "device_noise")
    return dict(checkpoint=checkpoint, npz=result["npz"], images=data["arr_0"], root=root,
                device_npz=device_result["npz"], device_images=device_data["arr_0"])


def test_sampling_on_cuda_is_reproducible_across_resume_and_batch_size(cuda_samples, tmp_path):
    summary = json.loads((Path(cuda_samples["npz"]).parent / "sampling.json").read_text())
    assert summary["device"].startswith("cuda")
    first, _ = run_library(cuda_samples["checkpoint"], tmp_path / "grown", num_samples=6)
    second, grown = run_library(cuda_samples["checkpoint"], tmp_path / "grown")
    assert (first["images_sampled"], second["images_sampled"]) == (6, 4)
    assert Path(second["npz"]).read_bytes() == Path(cuda_samples["device_npz"]).read_bytes()
    _, fours = run_library(cuda_samples["checkpoint"], tmp_path / "fours", batch_size=4)
    assert_same_up_to_rounding(fours["arr_0"], cuda_samples["device_images"])
    _, cpu_fours = run_library(cuda_samples["checkpoint"], tmp_path / "cpu_fours", batch_size=4, noise_device="cpu")
    assert_same_up_to_rounding(cpu_fours["arr_0"], cuda_samples["images"])


def test_device_noise_is_recorded_and_differs_from_cpu_noise(cuda_samples):
    summary = json.loads((Path(cuda_samples["device_npz"]).parent / "sampling.json").read_text())
    assert summary["image_flags"]["noise_device"] == "cuda"
    cpu_summary = json.loads((Path(cuda_samples["npz"]).parent / "sampling.json").read_text())
    assert "noise_device" not in cpu_summary["image_flags"]
    # Philox and Mersenne Twister: independent draws, so most pixels differ.
    assert (cuda_samples["device_images"] != cuda_samples["images"]).mean() > 0.5


def test_device_noise_on_cuda_is_the_same_for_any_batch_split():
    from guided_diffusion.noise import DeviceIndexedNoise

    x = torch.empty(7, 3, 8, 8, device=CUDA)
    whole = DeviceIndexedNoise(5, range(7), CUDA)
    parts = [DeviceIndexedNoise(5, indices, CUDA) for indices in ([0, 1, 2], [3, 4, 5, 6])]
    for _ in range(3):
        joined = torch.cat([parts[0].randn_like(x[:3]), parts[1].randn_like(x[3:])])
        assert torch.equal(whole.randn_like(x), joined)


def test_sampling_on_cuda_gives_the_cpu_images_to_rounding(cuda_samples, tmp_path):
    flags = sampling_flags(cuda_samples["checkpoint"], tmp_path / "cpu")
    command = [sys.executable, str(REPO / "scripts" / "image_sample.py")] + flag_list(flags)
    env = child_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(tmp_path / "cpu" / "samples_10x8x8x3.npz") as data:
        assert_same_up_to_rounding(data["arr_0"], cuda_samples["images"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two ranks need two GPUs (NCCL refuses two ranks on one device)")
def test_one_and_two_gpus_write_the_same_npz_bytes(cuda_samples, tmp_path):
    for nproc in (1, 2):
        flags = sampling_flags(cuda_samples["checkpoint"], tmp_path / str(nproc))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   str(REPO / "scripts" / "image_sample.py")] + flag_list(flags)
        result = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (tmp_path / str(n) / "samples_10x8x8x3.npz" for n in (1, 2))
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.parametrize(
    "flags",
    [
        dict(cuda_graphs=True),
        dict(cuda_graphs=True, channels_last=True, noise_threads=4),
        dict(compile=True, compile_mode="reduce-overhead"),
        dict(batch_size="auto", noise_threads=2),
    ],
    ids=["cuda_graphs", "graphs+channels_last+noise_threads", "compile-reduce-overhead", "batch_auto"],
)
def test_sampling_fast_paths_give_the_same_images(cuda_samples, tmp_path, flags):
    _, data = run_library(cuda_samples["checkpoint"], tmp_path, noise_device="cpu", **flags)
    assert_same_up_to_rounding(data["arr_0"], cuda_samples["images"])


def test_cuda_graph_forward_recaptures_for_a_new_shape():
    model, _ = perturbed_model()
    model.to(CUDA).eval()
    graphed = fast_paths.sampling_forward(model, "fp32", CUDA, FastPathOptions(cuda_graphs=True))
    with torch.no_grad():
        for size in (4, 4, 3, 4):
            x, t, _ = (v.to(CUDA) for v in batch(size=size, seed=size))
            first = graphed(x, t)
            second = graphed(x, t)
            # The output is a copy: a second call does not overwrite what the first returned.
            assert first.data_ptr() != second.data_ptr() and torch.equal(first, second)
            torch.testing.assert_close(first, model(x, t), rtol=0, atol=1e-6)
            assert graphed.key[0][1] == (size, 3, 32, 32)


def test_out_of_memory_probe_recovers_and_the_search_finds_a_batch():
    model, _ = perturbed_model()
    model.to(CUDA).eval()
    forward = fast_paths.sampling_forward(model, "bf16", CUDA, FastPathOptions())
    baseline = torch.cuda.memory_allocated()
    # 10^6 images: the input (12 GB) fits, the first convolution's output (131 GB in bfloat16) does not.
    assert not fast_paths.forward_fits(forward, 10**6, (3, 32, 32), None, CUDA)
    assert torch.cuda.memory_allocated() == baseline
    flags = dict(tiny_flags(**MODEL), precision="bf16", channels_last=False)
    found = fast_paths.auto_batch_size(model, flags, CUDA, limit=10**9)
    assert 1 <= found < 10**9 and fast_paths.forward_fits(forward, found, (3, 32, 32), None, CUDA)


# ---- FID features -------------------------------------------------------------------------------


@pytest.mark.skipif(not installed("torch_fidelity"), reason="needs torch-fidelity (not installed here): the FID "
                    "Inception is its network; pip install --no-deps torch-fidelity, a pure-Python wheel")
def test_fid_features_on_cuda_match_the_cpu(converted_weights, monkeypatch):  # noqa: F811
    from evaluations.inception import POOL_FEATURES, InceptionFeatures

    # As users run it: PyTorch's default TF32 convolutions.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    clean = synthetic_photos(8, 299, seed=1)
    noisy = with_noise(clean, 40.0, seed=2)
    features = {}
    for device in ("cpu", "cuda"):
        inception = InceptionFeatures(converted_weights, device=device)
        features[device] = {name: inception(images)[POOL_FEATURES].astype(np.float64) for name, images in
                            (("clean", clean), ("noisy", noisy))}
    for name in ("clean", "noisy"):
        cpu, cuda = features["cpu"][name], features["cuda"][name]
        assert np.linalg.norm(cuda - cpu) / np.linalg.norm(cpu) < 1e-2
    # The device moves FID by far less than the difference it measures.
    between_devices = fid_by_nuclear_norm(features["cpu"]["clean"], features["cuda"]["clean"])
    signal = fid_by_nuclear_norm(features["cpu"]["clean"], features["cpu"]["noisy"])
    assert abs(between_devices) < 1e-2 * signal
