"""The CUDA paths on device "cuda" without a GPU: PyTorch's FakeTensorMode (`make test` runs these, marker fake_cuda).

Fake tensors carry a device, shape and dtype but no data, and every operator checks its inputs'
devices, so a CPU tensor meeting a CUDA one (a schedule array, a timestep draw, noise left on the
CPU) raises as on a GPU. With torch.__future__.set_overwrite_module_params_on_conversion(True),
`module.to("cuda")` turns a real module's parameters into fake CUDA ones. Checked here (torch
2.14.1 in .venv): the UNet at the paper's full FFHQ 256x256 config (configs/ffhq.toml; nothing is
allocated) and its training loss; the training loss of every weighting and
target; the training loop's construction and forward on CUDA; AdamW's resumed state; a
step of every sampler with CPU noise; the FID Inception's features.

What stays untested here, and why (tests/test_cuda.py covers it on a GPU):
- backward and the optimizer's numbers: autograd needs a CUDA context;
- anything that reads values (`.item()`, `.tolist()`, numpy): fake tensors have none, so the
  training step's one host read (host_sync.agree) and the saving of samples are left out;
- real kernels, numerics, TF32, cuDNN, NCCL, CUDA graphs, torch.compile;
- bfloat16 and float16 autocast: torch disables CUDA autocast when no CUDA is available (it warns), so
  --precision bf16 runs float32 here;
- noise drawn on the device (--noise_device device): CUDA generators need the CUDA runtime;
- pinned memory: `pin_memory` has no fake kernel, so it is replaced by the identity here;
- converting a module already on the device (--channels_last): fake parameters cannot be swapped in
  place (`module._apply` refuses), so the fast paths' layout change is left to test_cuda.
"""

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from guided_diffusion import dist_util, gaussian_diffusion, noise, samplers, sampling, weighting
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.targets import TARGETS, target_flags
from guided_diffusion.train_util import TrainLoop
from tests.tiny import tiny_flags

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.fake_cuda

CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A FakeTensorMode in which real CPU tensors may enter (as numpy-made ones do) and modules convert."""
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self)
    # Schedule arrays kept on a device (gaussian_diffusion._on_device) must not outlive their fake mode.
    gaussian_diffusion._DEVICE_ARRAYS.clear()
    yield FakeTensorMode(allow_non_fake_inputs=True)
    gaussian_diffusion._DEVICE_ARRAYS.clear()
    torch.__future__.set_overwrite_module_params_on_conversion(previous)


def ffhq_flags():
    with open("configs/ffhq.toml", "rb") as f:
        config = tomllib.load(f)
    return dict(model_and_diffusion_defaults(), **config["model"], **config["diffusion"])


def test_the_full_ffhq_unet_runs_on_cuda(fake_cuda):
    flags = ffhq_flags()
    assert (flags["image_size"], flags["num_channels"], flags["learn_sigma"]) == (256, 128, True)
    with fake_cuda, torch.device("cuda"):
        model, diffusion = create_model_and_diffusion(**flags)
    with fake_cuda:
        assert all(p.device == CUDA for p in model.parameters())
        assert sum(p.numel() for p in model.parameters()) > 9e7
        x = torch.randn(2, 3, 256, 256, device=CUDA)
        t = torch.tensor([0, 999]).to(CUDA)
        out = model(x, t)
        assert out.shape == (2, 6, 256, 256) and out.device == CUDA and out.dtype == torch.float32
        losses = diffusion.training_losses(model, x, t)
        assert losses["loss"].shape == (2,) and losses["loss"].device == CUDA


def test_a_cpu_tensor_meeting_a_cuda_one_raises_as_on_a_gpu(fake_cuda):
    model, _ = create_model_and_diffusion(**tiny_flags())
    with fake_cuda:
        model.to(CUDA)
        with pytest.raises(RuntimeError, match="device"):
            model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]).to(CUDA))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("schedule", weighting.weight_schedule_names())
def test_the_training_loss_of_every_weighting_and_target_on_cuda(fake_cuda, schedule, target):
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**tiny_flags(weight_schedule=schedule, **target_flags(target)))
    with fake_cuda:
        model.to(CUDA)
        x = torch.randn(3, 3, 16, 16, device=CUDA)
        t = torch.tensor([0, 40, 99]).to(CUDA)
        losses = diffusion.training_losses(model, x, t)
        assert {k: (v.shape, v.device) for k, v in losses.items()} == {k: ((3,), CUDA) for k in losses}
        assert "loss" in losses


def test_the_training_loop_builds_and_runs_its_forward_on_cuda(fake_cuda, monkeypatch, tmp_path):
    from guided_diffusion import logger

    monkeypatch.setattr(dist_util, "dev", lambda: CUDA)
    logger.configure(str(tmp_path))
    model, diffusion = create_model_and_diffusion(**tiny_flags())
    with fake_cuda:
        model.to(CUDA)
        loop = TrainLoop(model=model, diffusion=diffusion, data=None, batch_size=2, lr=1e-3, log_dir=str(tmp_path))
        assert all(p.device == CUDA for params in loop.ema_params.values() for p in params)
        # Backward needs a CUDA context: the forward half of the step, with the batch coming from the CPU.
        monkeypatch.setattr(loop.mp_trainer, "backward", lambda loss: None)
        timesteps, losses, terms, finite = loop.forward_backward(torch.rand(2, 3, 16, 16) * 2 - 1, {})
        assert timesteps.device == losses.device == finite.device == CUDA
        assert all(v.device == CUDA for v in terms.values())


def test_resumed_adamw_state_keeps_its_step_counters_on_the_cpu(fake_cuda):
    """torch moves a loaded state to each parameter's device except `step` (not capturable, not fused):
    train_util loads the optimizer file on the CPU, so the counters stay there as for a fresh AdamW."""
    model, _ = create_model_and_diffusion(**tiny_flags())
    reference = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    reference.step()
    saved = reference.state_dict()
    with fake_cuda:
        model.to(CUDA)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        opt.load_state_dict(saved)
        states = list(opt.state.values())
        assert {s["step"].device.type for s in states} == {"cpu"}
        assert {s["exp_avg"].device for s in states} == {s["exp_avg_sq"].device for s in states} == {CUDA}


def sampler_flags(name, steps=2):
    flags = dict(sampling.sampling_defaults(), **tiny_flags(), sampler=name)
    flags.update(samplers.steps_flags(name, steps))
    return flags


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_a_step_of_every_sampler_runs_on_cuda_with_cpu_noise(fake_cuda, name):
    sampler = samplers.get_sampler(name)
    flags = sampler_flags(name)
    respacing = flags["timestep_respacing"] if sampler.respaced else ""
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**dict(tiny_flags(), timestep_respacing=respacing))
    source = noise.noise_source(0, range(2), "cpu", CUDA)
    with fake_cuda:
        model.to(CUDA).eval()
        with torch.no_grad():
            images = sampler.run(model, diffusion, (2, 3, 16, 16), model_kwargs={}, noise_source=source, device=CUDA,
                                 flags=flags)
        assert images.shape == (2, 3, 16, 16) and images.device == CUDA


def test_the_fid_inception_features_on_cuda(fake_cuda, tmp_path):
    from evaluations.convert_inception import torch_fidelity_layout
    from evaluations.inception import POOL_FEATURES, SPATIAL_CHANNELS, InceptionFeatures

    weights = tmp_path / "random_inception.pth"
    torch.save(torch_fidelity_layout().state_dict(), weights)
    inception = InceptionFeatures(str(weights), device="cpu")
    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    with fake_cuda:
        inception.extractor.to(CUDA)
        inception.device = CUDA
        batch = inception.to_batch(images)
        assert batch.device == CUDA and batch.dtype == torch.uint8
        pool, spatial = inception.forward(batch)
        assert pool[POOL_FEATURES].shape == (2, 2048) and pool[POOL_FEATURES].device == CUDA
        assert spatial.shape == (2, 17 * 17 * SPATIAL_CHANNELS) and spatial.device == CUDA

