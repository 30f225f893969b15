"""Numeric flags outside their range are refused in one line naming the flag, before anything is written,
and a training run refused at set-up leaves no log dir behind."""

import math

import pytest

from evaluations import fid as fid_cli
from guided_diffusion import samplers
from guided_diffusion.run import run_lock
from guided_diffusion.run.training_flags import RANGES, check_training_flag_values
from guided_diffusion.script_util import check_model_flags, model_and_diffusion_defaults
from guided_diffusion.train_util import image_train_defaults
from scripts import image_sample, image_train
from tests.bad_inputs import message_lines, sampling_argv, training_argv, write_images
from tests.tiny import save_random_checkpoint, tiny_flags

# One value outside each flag's range, and the words of the range the refusal must give.
OUTSIDE = {
    "batch_size": (0, "at least 1"),
    "microbatch": (-2, "-1 or 0"),
    "lr": (-1e-3, "above 0"),
    "weight_decay": (-1.0, "0 or above"),
    "fp16_scale_growth": (0.0, "above 0"),
    "log_interval": (0, "at least 1"),
    "save_interval": (0, "at least 1"),
    "max_steps": (-5, "0 (no limit)"),
    "lr_anneal_steps": (-1, "0 (no limit)"),
    "num_workers": (-1, "0 (load in the training process)"),
    "seed": (2**32, "from 0 to 4294967295"),
}


def test_every_ranged_flag_has_a_case():
    assert set(OUTSIDE) == set(RANGES)


def test_the_training_defaults_are_inside_every_range():
    check_training_flag_values(image_train_defaults())


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_a_value_outside_the_range_names_the_flag_and_the_range(name):
    value, expected = OUTSIDE[name]
    with pytest.raises(ValueError) as refused:
        check_training_flag_values({**image_train_defaults(), name: value})
    assert str(refused.value).startswith(f"--{name} {value}: expected ") and expected in str(refused.value)


@pytest.mark.parametrize("lr", [0.0, math.nan, math.inf, -1e-3])
def test_a_learning_rate_must_be_finite_and_positive(lr):
    with pytest.raises(ValueError, match=f"--lr {lr}: expected a finite number above 0"):
        check_training_flag_values({"lr": lr})


@pytest.mark.parametrize("microbatch, accepted", [(-1, True), (0, True), (1, True), (8, True), (9, False), (-2, False)])
def test_microbatch_is_adms_off_values_or_a_part_of_the_batch(microbatch, accepted):
    flags = {"batch_size": 8, "microbatch": microbatch}
    if accepted:
        check_training_flag_values(flags)
    else:
        with pytest.raises(ValueError, match=f"--microbatch {microbatch}: expected"):
            check_training_flag_values(flags)


@pytest.mark.parametrize("dropout, accepted", [(0.0, True), (0.1, True), (1.0, False), (-0.1, False), (math.nan, False)])
def test_dropout_is_a_probability_for_training_and_sampling(dropout, accepted):
    flags = {**model_and_diffusion_defaults(), "dropout": dropout}
    if accepted:
        check_model_flags(flags)
    else:
        with pytest.raises(ValueError, match=rf"--dropout {dropout}: expected a probability in \[0, 1\)"):
            check_model_flags(flags)


@pytest.mark.parametrize("eta, accepted", [(0.0, True), (0.5, True), (1.0, True), (-1.0, False), (1.5, False), (math.nan, False)])
def test_ddims_eta_runs_from_deterministic_to_ddpms_noise(eta, accepted):
    flags = {**samplers.SAMPLER_OPTION_DEFAULTS, "sampler": "ddim", "eta": eta, "clip_denoised": True}
    if accepted:
        samplers.check_options("ddim", flags)
    else:
        with pytest.raises(ValueError, match=f"--eta {eta}: expected a number from 0"):
            samplers.check_options("ddim", flags)


def test_a_training_run_with_a_bad_value_never_claims_its_log_dir(tmp_path, capsys):
    run = tmp_path / "run"
    assert image_train.main(training_argv(write_images(tmp_path / "data", 4), run, "--lr", "-1e-3")) == 1
    assert message_lines(capsys.readouterr().err) == ["image_train.py: error: --lr -0.001: expected a finite number above 0"]
    assert not run.exists()


def test_a_run_refused_after_claiming_its_log_dir_removes_the_dir_it_made(tmp_path, capsys):
    """No images: found by the data loader, after the lock and the log are in place."""
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    assert image_train.main(training_argv(tmp_path / "empty", run)) == 1
    lines = message_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "contains no images" in lines[0]
    assert not run.exists()


def test_a_refused_run_keeps_a_log_dir_that_existed(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert image_train.main(training_argv(tmp_path / "empty", run)) == 1
    assert (run / "notes.txt").read_text() == "mine" and (run / "log.txt").exists()


@pytest.mark.parametrize("contents, removed", [
    ({"log.txt": "set-up lines", run_lock.LOCK_NAME: ""}, True),
    ({"log.txt": "set-up lines", "progress.csv": ""}, True),
    ({"log.txt": "step 2", "progress.csv": "loss\n0.5\n"}, False),
    ({"log.txt": "", "model000002.pt": "weights"}, False),
])
def test_only_a_dir_holding_nothing_but_set_up_files_is_removed(tmp_path, contents, removed):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), run_lock.removed_when_refused(str(run)):
        run.mkdir()
        for name, text in contents.items():
            (run / name).write_text(text)
        raise RuntimeError("refused")
    assert run.exists() is not removed


def test_a_dir_is_kept_when_the_block_succeeds_or_on_other_ranks(tmp_path):
    run = tmp_path / "run"
    with run_lock.removed_when_refused(str(run)):
        run.mkdir()
        (run / "log.txt").write_text("")
    assert run.exists()
    other = tmp_path / "other"
    with pytest.raises(RuntimeError), run_lock.removed_when_refused(str(other), enabled=False):
        other.mkdir()
        raise RuntimeError("refused")
    assert other.exists()


def test_sampling_refuses_a_bad_eta_before_writing(tmp_path, capsys):
    model = tmp_path / "model.pt"
    save_random_checkpoint(model, tiny_flags())
    out = tmp_path / "out"
    assert image_sample.main(sampling_argv(model, out, "--sampler", "ddim", "--eta", "-1")) == 1
    lines = message_lines(capsys.readouterr().err)
    assert lines == ["image_sample.py: error: --eta -1.0: expected a number from 0 (deterministic DDIM) to 1 (DDPM's noise)"]
    assert not out.exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--train_seed", -1, "--train_seed -1: expected a training seed, 0 or more"),
    ("--iterations", -5, "--iterations -5: expected training iterations, 0 or more"),
    ("--steps", 0, "--steps 0: expected sampling steps, 1 or more"),
])
def test_registry_fields_outside_their_range_are_refused_before_evaluating(tmp_path, capsys, flag, value, expected):
    results = tmp_path / "results.jsonl"
    argv = ["--samples", str(tmp_path / "absent.npz"), "--ref", str(tmp_path / "absent.npz"), "--results", str(results),
            flag, str(value)]
    assert fid_cli.main(argv) == 2
    assert message_lines(capsys.readouterr().err) == [f"error: {expected}"]
    assert not results.exists()
