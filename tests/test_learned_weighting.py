"""EDM2's learned weighting beside ADM's UNet: its loss, its optimizer group, its file, resume and strict ADM load."""

import json
import math

import numpy as np
import pytest
import torch

from guided_diffusion import logger
from guided_diffusion.learned_weighting import FixedWeighting, LearnedWeighting, for_training
from guided_diffusion.run.checkpoint import CheckpointError
from guided_diffusion.script_util import create_gaussian_diffusion, create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.train_util import TrainLoop, train
from tests.test_training import read_progress, training_flags


def test_loss_is_lambda_over_exp_u_plus_u_and_u_minimises_at_log_of_the_loss():
    diffusion = create_gaussian_diffusion(steps=100, weight_schedule="edm2")
    learned = LearnedWeighting(diffusion)
    with torch.no_grad():
        learned.module.linear.weight.normal_(generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 50, 99])
    weighted, vb = torch.tensor([2.0, 0.5, 7.0]), torch.tensor([0.1, 0.2, 0.3])
    u = learned.module(t).detach()
    out = learned.reweigh({"loss": weighted + vb, "vb": vb, "mse": weighted}, t)
    torch.testing.assert_close(out["loss"], weighted / torch.exp(u) + u + vb)
    # d/du [L exp(-u) + u] = 0 at u = log L: a u that fits the loss normalises it to 1.
    for level in (0.25, 3.0):
        u_star = torch.tensor(math.log(level), requires_grad=True)
        (level * torch.exp(-u_star) + u_star).backward()
        assert abs(float(u_star.grad)) < 1e-6


def test_only_edm2_learns_and_fp16_is_refused():
    assert isinstance(for_training(create_gaussian_diffusion(steps=100, weight_schedule="edm"), "fp32"), FixedWeighting)
    with pytest.raises(ValueError, match=r"^--weight_schedule edm2 learns its weighting in float32 .* use --precision fp32 or bf16$"):
        for_training(create_gaussian_diffusion(steps=100, weight_schedule="edm2"), "fp16")


def test_edm2_trains_saves_its_own_file_resumes_and_keeps_the_unet_adms(tiny_model_flags, class_image_folder, tmp_path):
    run = tmp_path / "run"
    flags = training_flags(tiny_model_flags, class_image_folder, run, max_steps=2, save_interval=2,
                           weight_schedule="edm2", schedule_sampler="edm2-lognormal")
    first = train(flags)
    u = first.learned_weighting.curve()
    assert np.all(np.isfinite(u)) and np.abs(u).max() > 0  # it trained away from 0
    assert len(first.opt.param_groups) == 2
    manifest = json.loads((run / "checkpoint000002.json").read_text())
    assert manifest["files"]["loss_weighting"] == "loss_weighting000002.pt"
    assert "loss_weighting000002.pt" in manifest["sha256"]
    # The UNet's file is ADM's: it loads strictly into ADM's UNet and holds nothing of the weighting.
    state = torch.load(run / "model000002.pt", weights_only=True)
    adm_model, _ = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny_model_flags})
    adm_model.load_state_dict(state, strict=True)
    saved = torch.load(run / "loss_weighting000002.pt", weights_only=True)
    assert set(saved) == {"c_noise", "frequencies", "phases", "linear.weight"}
    # u is logged at every log interval, at 10 evenly spaced t.
    rows = read_progress(run)
    assert len(rows) == 2 and {"u_t0000", "u_t0099"} <= set(rows[0])
    assert float(rows[-1]["u_t0099"]) == pytest.approx(u[99], rel=1e-5)

    model, diffusion = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny_model_flags,
                                                     "weight_schedule": "edm2"})
    logger.configure(str(run))
    resumed = TrainLoop(model=model, diffusion=diffusion, data=None, batch_size=2, lr=1e-3, resume_checkpoint="auto",
                        log_dir=str(run), learned_weighting=LearnedWeighting(diffusion))
    np.testing.assert_array_equal(resumed.learned_weighting.curve(), u)
    first_state, resumed_state = first.opt.state_dict(), resumed.opt.state_dict()
    for key in first_state["state"]:
        torch.testing.assert_close(resumed_state["state"][key]["exp_avg"], first_state["state"][key]["exp_avg"])

    train({**flags, "max_steps": 4, "resume_checkpoint": "auto"})
    assert [int(r["step"]) for r in read_progress(run)] == [1, 2, 3, 4]
    assert (run / "loss_weighting000004.pt").exists()


def test_a_replaced_weighting_file_is_refused_in_one_line(tiny_model_flags, class_image_folder, tmp_path):
    run = tmp_path / "run"
    flags = training_flags(tiny_model_flags, class_image_folder, run, weight_schedule="edm2")
    train(flags)
    path = run / "loss_weighting000002.pt"
    state = torch.load(path, weights_only=True)
    state["linear.weight"] = state["linear.weight"] + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        train({**flags, "max_steps": 3, "resume_checkpoint": "auto"})
    assert str(e.value).endswith("loss_weighting000002.pt does not match the sha256 its manifest records: corrupt or replaced")
    assert "\n" not in str(e.value)


def test_learned_weights_figure_reads_u_beside_the_checkpoint(tiny_model_flags, class_image_folder, tmp_path):
    from scripts.analysis import learned_weights
    from tests.test_analysis import assert_png, read_csv

    for run, extra in (("edm2", dict(schedule_sampler="edm2-lognormal")), ("debias", {})):
        train(training_flags(tiny_model_flags, class_image_folder, tmp_path / run, weight_schedule=run, **extra))
    specs = ",".join(f"{run}={tmp_path / run / 'ema_0.9999_000002.pt'}" for run in ("edm2", "debias"))
    assert learned_weights.main(["--checkpoints", specs, "--out", str(tmp_path / "fig")]) == 0
    assert_png(tmp_path / "fig.png")
    rows = read_csv(tmp_path / "fig.csv")
    diffusion = create_gaussian_diffusion(steps=100)
    snr = diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)
    log_snr = np.log(snr)
    # Independently: EDM's epsilon weight, EDM2's density in ln sigma = -log SNR / 2, u from the saved module.
    widths = np.abs(np.diff(log_snr, prepend=2 * log_snr[0] - log_snr[1]))
    density = np.exp(-0.5 * ((-log_snr / 2 + 0.4) / 1.0) ** 2) * widths
    module = LearnedWeighting(diffusion).module
    module.load_state_dict(torch.load(tmp_path / "edm2" / "loss_weighting000002.pt", weights_only=True))
    with torch.no_grad():
        u = module(torch.arange(100)).double().numpy()
    expected = {"edm2": (1 + 4 / snr) * 100 * density / density.sum() / np.exp(u), "debias": 1 / np.sqrt(snr)}
    for run, weight in expected.items():
        mine = [r for r in rows if r["run"] == run]
        np.testing.assert_allclose([float(r["weight"]) for r in mine], weight, rtol=1e-6)
    assert learned_weights.main(["--checkpoints", f"x={tmp_path / 'none.pt'}"]) == 1


def test_retention_deletes_a_pruned_sets_weighting_file_with_it(tiny_model_flags, class_image_folder, tmp_path):
    run = tmp_path / "run"
    train(training_flags(tiny_model_flags, class_image_folder, run, weight_schedule="edm2", max_steps=4, keep_checkpoints=1))
    assert sorted(p.name for p in run.glob("loss_weighting*.pt")) == ["loss_weighting000004.pt"]
    assert not (run / "model000002.pt").exists()
