"""Command lines copied from ADM's, P2's and the paper's own READMEs, shrunk to a tiny model, do what their
authors meant: they train the weighting the author's code trains or refuse in one line, sample into
--sample_dir or $OPENAI_LOGDIR, run the paper's own sampler, read the flags saved beside the checkpoint,
and log in ADM's formats."""

import json
import math
import re
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator

from guided_diffusion import logger, samplers, sampling, weighting
from guided_diffusion.run import fast_paths, flag_help
from guided_diffusion.gaussian_diffusion import get_named_beta_schedule
from guided_diffusion.script_util import (
    create_gaussian_diffusion,
    create_model_and_diffusion,
    diffusion_kwargs,
    named_on_command_line,
)
from guided_diffusion.run.timestep_metrics import TimestepBinErrors, bin_starts
from guided_diffusion.targets import ModelMeanType
from pipeline import expand, load_plan
from scripts import image_sample, image_train
from tests.tiny import TINY_8X8, save_random_checkpoint, tiny_flags

REPO = Path(__file__).resolve().parents[1]

# The training lines of P2's README (jychoi118/P2-weighting) and of the paper's (yuhuUSTC/Debias).
P2_TRAIN = (
    "--data_dir data/DATASET_NAME --attention_resolutions 16 --class_cond False --diffusion_steps 1000 "
    "--dropout 0.0 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 128 "
    "--num_head_channels 64 --num_res_blocks 1 --resblock_updown True --use_fp16 False --use_scale_shift_norm True "
    "--lr 2e-5 --batch_size 8 --rescale_learned_sigmas True --p2_gamma 1 --p2_k 1 --log_dir logs"
)
DEBIAS_TRAIN = (
    "--data_dir data/celeba_hq_256 --attention_resolutions 16 --class_cond False --diffusion_steps 1000 "
    "--dropout 0.0 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 128 "
    "--num_head_channels 64 --num_res_blocks 1 --resblock_updown True --use_fp16 False --use_scale_shift_norm True "
    "--lr 2e-5 --batch_size 8 --rescale_learned_sigmas True --p2_gamma 1 --p2_k 1 --log_dir logs/CeleAHQ/Debias "
    "--predict_xstart False --predict_v False"
)
# Their sampling lines (P2's, and the paper's with its --sampler).
P2_SAMPLE = (
    "--attention_resolutions 16 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 128 --num_res_blocks 1 --num_head_channels 64 "
    "--resblock_updown True --use_fp16 False --use_scale_shift_norm True --timestep_respacing 250 "
    "--model_path models/ffhq_p2.pt --sample_dir samples"
)
DEBIAS_SAMPLE = (
    "--attention_resolutions 16 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 128 --num_res_blocks 1 --num_head_channels 64 "
    "--resblock_updown True --use_fp16 False --use_scale_shift_norm True --timestep_respacing 100 "
    "--predict_xstart False --predict_v False --model_path logs/CeleAHQ/debias_ema_0.9999_500000.pt "
    "--sample_dir samples/CelebAHQ_100/Debias --sampler ddpm"
)


def shrunk(line, **values):
    """The README line's argv with the tiny 8x8 model's flags and `values` in place of the authors' (added if absent)."""
    argv = shlex.split(line)
    replacements = {**{k: str(v) for k, v in TINY_8X8.items()}, **{k: str(v) for k, v in values.items()}}
    out = []
    for flag, value in zip(argv[::2], argv[1::2]):
        out += [flag, replacements.pop(flag[2:], value)]
    for key, value in replacements.items():
        out += [f"--{key}", value]
    return out


def train_line(line, data_dir, log_dir, *extra, steps=1):
    argv = shrunk(line, data_dir=data_dir, log_dir=log_dir, batch_size=2, max_steps=steps, num_workers=0)
    return image_train.main(argv + [str(a) for a in extra])


def manifest(log_dir, step=1):
    return json.loads((log_dir / f"checkpoint{step:06d}.json").read_text())


def one_line_error(capsys, script):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), err
    return lines[0]


def snr(steps=TINY_8X8["diffusion_steps"]):
    a = np.cumprod(1.0 - get_named_beta_schedule("linear", steps))
    return a / (1.0 - a)


# ---- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [P2_TRAIN, DEBIAS_TRAIN], ids=["p2_readme", "paper_readme"])
def test_readme_training_line_without_a_schedule_is_refused_in_one_line(line, class_image_folder, tmp_path, capsys):
    assert train_line(line, class_image_folder, tmp_path / "run") == 1
    error = one_line_error(capsys, "image_train.py")
    assert "--p2_gamma, --p2_k are parameters of --weight_schedule p2, not of --weight_schedule constant" in error
    assert "--weight_schedule p2 (P2's code) or --weight_schedule debias (the paper's code)" in error
    assert not (tmp_path / "run").exists()


def test_p2_readme_line_with_its_schedule_trains_p2_and_logs_for_tensorboard(
    class_image_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("OPENAI_LOG_FORMAT", "stdout,csv,tensorboard")
    log_dir = tmp_path / "run"
    assert train_line(P2_TRAIN.replace("--p2_gamma 1", "--p2_gamma 0.5"), class_image_folder, log_dir,
                      "--weight_schedule", "p2") == 0
    flags = manifest(log_dir)["flags"]
    assert (flags["weight_schedule"], flags["p2_gamma"], flags["p2_k"]) == ("p2", 0.5, 1.0)
    _, diffusion = create_model_and_diffusion(**{key: flags[key] for key in tiny_flags()})
    np.testing.assert_allclose(diffusion.mse_weights, (1.0 + snr()) ** -0.5, rtol=1e-12)

    # stdout,csv,tensorboard: no log.txt, an event file TensorBoard's reader loads, with the per-band errors.
    assert not (log_dir / "log.txt").exists() and (log_dir / "progress.csv").exists()
    events = event_accumulator.EventAccumulator(str(log_dir / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "mse", "grad_norm"} <= set(scalars)
    assert any(tag.startswith("eps_mse_t") for tag in scalars) and any(tag.startswith("x0_mse_t") for tag in scalars)
    assert [event.step for event in events.Scalars("loss")] == [1]


def test_paper_readme_line_with_debias_trains_debias_and_logs_p2s_flags_as_unread(class_image_folder, tmp_path):
    log_dir = tmp_path / "run"
    assert train_line(DEBIAS_TRAIN, class_image_folder, log_dir, "--weight_schedule", "debias") == 0
    flags = manifest(log_dir)["flags"]
    assert flags["weight_schedule"] == "debias"
    _, diffusion = create_model_and_diffusion(**{key: flags[key] for key in tiny_flags()})
    np.testing.assert_allclose(diffusion.mse_weights, snr() ** -0.5, rtol=1e-12)
    assert "--p2_gamma, --p2_k not read: --weight_schedule debias has no such parameter" in (log_dir / "log.txt").read_text()


def test_a_parameter_in_a_config_counts_as_given_even_at_its_default(class_image_folder, tmp_path, capsys):
    config = tmp_path / "p2.toml"
    config.write_text(f"[diffusion]\np2_gamma = {weighting.parameter_defaults()['p2_gamma']}\n")
    argv = shrunk("--weight_schedule min_snr", config=config, data_dir=class_image_folder, log_dir=tmp_path / "run",
                  max_steps=1)
    assert image_train.main(argv) == 1
    assert "--p2_gamma is a parameter of --weight_schedule p2, not of --weight_schedule min_snr" in one_line_error(
        capsys, "image_train.py"
    )


def test_flags_given_are_found_however_spelled():
    defaults = {"p2_gamma": 1.0, "p2_k": 1.0, "lr": 1e-4}
    assert named_on_command_line(defaults, ["--p2_gamma=1", "--lr", "2e-5"]) == {"p2_gamma", "lr"}
    assert named_on_command_line(defaults, ["--p2_k", "1.0"]) == {"p2_k"}
    assert named_on_command_line(defaults, ["--p2_g", "1"]) == {"p2_gamma"}  # argparse's abbreviation
    assert named_on_command_line(defaults, []) == set()


def test_resuming_with_another_weighting_says_so_and_cpu_fp16_runs_fp32(class_image_folder, tmp_path):
    log_dir = tmp_path / "run"
    assert train_line(DEBIAS_TRAIN, class_image_folder, log_dir, "--weight_schedule", "debias") == 0
    assert train_line(DEBIAS_TRAIN.replace("--use_fp16 False", "--use_fp16 True"), class_image_folder, log_dir,
                      "--resume_checkpoint", "auto", steps=2) == 1  # the schedule is constant now: P2's flags refused
    assert train_line(P2_TRAIN.replace("--use_fp16 False", "--use_fp16 True"), class_image_folder, log_dir,
                      "--weight_schedule", "p2", "--resume_checkpoint", "auto", steps=2) == 0
    log = (log_dir / "log.txt").read_text()
    assert "resuming with another loss weighting than the checkpoint was trained with: --weight_schedule p2 " \
           "(checkpoint: debias)" in log
    assert "--use_fp16 True: this device has no fast float16, running fp32" in log
    assert manifest(log_dir, 2)["precision"] == "fp32"


# ---- sampling ------------------------------------------------------------------------------------


@pytest.fixture
def adm_checkpoint(tmp_path):
    """A perturbed state dict (no manifest beside it) of the READMEs' architecture at the tiny 8x8 size."""
    path = tmp_path / "models" / "ffhq_p2.pt"
    path.parent.mkdir()
    save_random_checkpoint(path, tiny_flags(**TINY_8X8, resblock_updown=True), seed=1, perturbation=0.05)
    return path


def sample_line(line, **values):
    return image_sample.main(shrunk(line, num_samples=2, batch_size=2, **values))


def test_p2_sampling_line_writes_into_sample_dir(adm_checkpoint, tmp_path):
    assert sample_line(P2_SAMPLE, model_path=adm_checkpoint, sample_dir=tmp_path / "samples", timestep_respacing=5) == 0
    with np.load(tmp_path / "samples" / "samples_2x8x8x3.npz") as data:
        assert data["arr_0"].shape == (2, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    summary = json.loads((tmp_path / "samples" / "sampling.json").read_text())
    assert (summary["run"]["sampler"], summary["run"]["steps"]) == ("ddpm", 5)


def test_adm_sampling_line_without_out_dir_writes_into_openai_logdir(adm_checkpoint, tmp_path, monkeypatch, capsys):
    adm_line = " ".join(P2_SAMPLE.split(" --sample_dir")[0].split()) + " --batch_size 4 --num_samples 100"
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    assert sample_line(adm_line, model_path=adm_checkpoint, timestep_respacing=3) == 1
    assert "--out_dir is required (or --sample_dir, or OPENAI_LOGDIR" in one_line_error(capsys, "image_sample.py")
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "openai"))
    assert sample_line(adm_line, model_path=adm_checkpoint, timestep_respacing=3) == 0
    assert (tmp_path / "openai" / "samples_2x8x8x3.npz").exists()


class RecordingModel:
    """Wraps the model the sampler calls, keeping each call's input, ADM timestep and output."""

    def __init__(self, model):
        self.model = model
        self.calls = []

    def __call__(self, x, timesteps, **kwargs):
        out = self.model(x, timesteps, **kwargs)
        self.calls.append((x.detach().clone().double(), float(timesteps[0]), out[:, :3].detach().clone().double()))
        return out


def test_paper_sampling_line_with_dpm_solver_runs_the_papers_solver(adm_checkpoint, tmp_path, monkeypatch):
    recorders = []

    def recording_autocast(model, precision, device):
        recorders.append(RecordingModel(model))
        return recorders[-1]

    monkeypatch.setattr(fast_paths, "autocast_model", recording_autocast)
    steps = 10
    assert sample_line(DEBIAS_SAMPLE, model_path=adm_checkpoint, sample_dir=tmp_path / "paper",
                       sampler="paper_dpm_solver", timestep_respacing=steps) == 0
    assert (tmp_path / "paper" / "samples_2x8x8x3.npz").exists()
    summary = json.loads((tmp_path / "paper" / "sampling.json").read_text())
    assert (summary["run"]["sampler"], summary["run"]["steps"]) == ("paper_dpm_solver", steps)

    # Time-uniform steps from t = 1 to 1/N, and the first one is DDIM in the noise form, in closed form:
    # x_1 = (a_1 / a_0) x_0 - s_1 (e^(l_1 - l_0) - 1) eps_0, with a, s, l interpolated in log a between steps.
    calls = recorders[0].calls
    n = TINY_8X8["diffusion_steps"]
    assert [index for _, index, _ in calls] == pytest.approx([(n - 1) * (1 - i / steps) for i in range(steps)])
    log_alpha = 0.5 * np.log(np.cumprod(1.0 - get_named_beta_schedule("linear", n)))
    (x0, i0, eps0), (x1, i1, _) = calls[:2]
    a0, a1 = (math.exp(np.interp(i, np.arange(n), log_alpha)) for i in (i0, i1))
    s0, s1 = (math.sqrt(1 - a * a) for a in (a0, a1))
    expected = a1 / a0 * x0 - s1 * math.expm1(math.log(a1 / s1) - math.log(a0 / s0)) * eps0
    torch.testing.assert_close(x1, expected, rtol=1e-5, atol=1e-5)

    # The paper's literal `--sampler dpm_solver` runs today's DPM-Solver++, on log-SNR steps.
    recorders.clear()
    assert sample_line(DEBIAS_SAMPLE, model_path=adm_checkpoint, sample_dir=tmp_path / "ours", sampler="dpm_solver",
                       timestep_respacing=4) == 0
    assert len(recorders[0].calls) == 4
    assert recorders[0].calls[1][1] != pytest.approx((n - 1) * (1 - 1 / 4))


def test_sampling_reads_the_architecture_saved_beside_the_checkpoint(class_image_folder, tmp_path, capsys):
    log_dir = tmp_path / "run"
    assert train_line(DEBIAS_TRAIN, class_image_folder, log_dir, "--weight_schedule", "debias",
                      "--num_channels", "64") == 0
    ema = log_dir / "ema_0.9999_000001.pt"
    argv = ["--model_path", str(ema), "--sample_dir", str(tmp_path / "s"), "--num_samples", "2", "--batch_size", "2",
            "--timestep_respacing", "3"]
    assert image_sample.main(argv) == 0
    assert json.loads((tmp_path / "s" / "sampling.json").read_text())["run"]["weight_schedule"] == "debias"

    capsys.readouterr()
    assert image_sample.main(argv + ["--num_channels", "128", "--image_size", "8"]) == 1
    error = one_line_error(capsys, "image_sample.py")
    assert "--num_channels 128 (trained with 64)" in error and "checkpoint000001.json" in error
    assert len(error) < 300


# ---- logging -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean_type,eps_per_target", [
    (ModelMeanType.EPSILON, lambda r: np.ones_like(r)),
    (ModelMeanType.START_X, lambda r: r),
    (ModelMeanType.VELOCITY, lambda r: r / (1 + r)),
])
def test_band_errors_are_eps_and_x0_space_mse(mean_type, eps_per_target):
    diffusion = types.SimpleNamespace(
        num_timesteps=100, model_mean_type=mean_type, alphas_cumprod=np.cumprod(1.0 - get_named_beta_schedule("linear", 100))
    )
    errors = TimestepBinErrors(diffusion)
    t = np.array([0, 9, 10, 55, 99])
    mse = np.array([0.5, 0.25, 2.0, 1.0, 0.125])
    bands, eps_mse, x0_mse = errors.errors(t, mse)
    r = snr(100)[t]
    np.testing.assert_array_equal(bands, [0, 0, 1, 5, 9])
    np.testing.assert_allclose(eps_mse, mse * eps_per_target(r), rtol=1e-12)
    np.testing.assert_allclose(x0_mse, mse * eps_per_target(r) / r, rtol=1e-12)  # Eq. 6
    assert errors.suffixes == [f"t{k:02d}" for k in range(0, 100, 10)]
    assert bin_starts(1000) == list(range(0, 1000, 100)) and bin_starts(7, 3) == [0, 3, 5]


def test_wandb_is_used_when_asked_for_and_installed(tmp_path, monkeypatch):
    logged = []
    run = types.SimpleNamespace(log=lambda row, step=None: logged.append((row, step)), finish=lambda: logged.append("end"))
    inits = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: inits.append(kwargs) or run))
    monkeypatch.setenv("OPENAI_LOG_FORMAT", "wandb,json")
    logger.configure(str(tmp_path / "run"))
    logger.logkv("step", 7)
    logger.logkv_mean("loss", 0.25)
    logger.logkv("note", "text")
    logger.dumpkvs()
    logger.close()
    assert inits == [dict(dir=str(tmp_path / "run"), name="run", project="debias-adm")]
    assert logged == [({"step": 7, "loss": 0.25}, 7), "end"]
    assert json.loads((tmp_path / "run" / "progress.json").read_text()) == {"loss": 0.25, "note": "text", "step": 7}


def test_log_formats_are_checked(monkeypatch):
    assert logger.log_formats("stdout,log,csv,json,tensorboard") == ["stdout", "log", "csv", "json", "tensorboard"]
    monkeypatch.delenv("OPENAI_LOG_FORMAT", raising=False)
    assert logger.log_formats() == ["stdout", "log", "csv"]
    with pytest.raises(ValueError, match="unknown format.*xml"):
        logger.log_formats("stdout,xml")
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees when it is not installed
    with pytest.raises(ValueError, match="wandb, which is not installed"):
        logger.log_formats("wandb")


# ---- --help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("script,defaults,help_lines", [
    (image_train, image_train.image_train_defaults, flag_help.training_help),
    (image_sample, sampling.flag_defaults, flag_help.sampling_help),
])
def test_every_flag_has_help_and_the_schedule_lists_its_choices(script, defaults, help_lines, capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    def squeezed(text):
        return re.sub(r"\s", "", text)

    text = squeezed(capsys.readouterr().out)
    lines = help_lines()
    for key in defaults():
        assert lines.get(key) and f"--{key}{key.upper()}{squeezed(lines[key])}(default:" in text, key
    assert "lossweighting,oneof:" + ",".join(weighting.weight_schedule_names()) in text
    if script is image_sample:
        assert all(f"{name}:" in text for name in samplers.sampler_names())


def test_a_plan_passes_each_run_only_its_own_schedules_parameters(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[plan]\nname = "p"\n[train]\nmax_steps = 2\np2_gamma = 0.5\nmin_snr_gamma = 4.0\n'
        '[sample]\nnum_samples = 2\nsamplers = [{ sampler = "ddim", steps = [3] }]\n'
        f'[[datasets]]\nname = "embedded"\nconfig = "{REPO / "configs" / "demo.toml"}"\n'
        'runs = ["constant", "p2", "min_snr", "debias"]\n'
    )
    stages = {s.name: s for s in expand(load_plan(str(plan), root=str(tmp_path / "w")))}
    for run, own in [("constant", set()), ("p2", {"p2_gamma"}), ("min_snr", {"min_snr_gamma"}), ("debias", set())]:
        flags, given = image_train.parse_command_line(stages[f"train/embedded/{run}"].argv[2:])
        assert {p for p in weighting.parameter_owners() if p in given} == own
        assert weighting.check_given_parameters(flags["weight_schedule"], given) is None
    assert image_train.parse_flags(stages["train/embedded/p2"].argv[2:])["p2_gamma"] == 0.5


@pytest.mark.parametrize("target_flag,their_weight", [
    ("--predict_xstart", lambda r: np.minimum(r, 5.0)),  # Min-SNR's min_snr_5 on the x0 error
    ("--predict_v", lambda r: np.minimum(r, 5.0) / (r + 1.0)),  # its vmin_snr_5 on the v error
])
def test_min_snr_x0_and_v_lines_are_min_snr_in_eps_space(target_flag, their_weight):
    flags = image_train.parse_flags(
        [target_flag, "True", "--weight_schedule", "min_snr", "--min_snr_gamma", "5", "--weight_space", "eps",
         "--diffusion_steps", "1000", "--noise_schedule", "cosine"]
    )
    diffusion = create_gaussian_diffusion(**diffusion_kwargs(flags))
    a = diffusion.alphas_cumprod
    np.testing.assert_allclose(diffusion.mse_weights, their_weight(a / (1 - a)), rtol=1e-10)
