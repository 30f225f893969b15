"""The health rule of a checkpoint set: a run where most, but not all, updates are skipped ends non-zero
with one stderr line, its manifest records the rule, and sampling that set is refused unless asked."""

import json

import pytest

from guided_diffusion import train_util
from guided_diffusion.run import host_sync
from guided_diffusion.run.divergence import DivergenceWatch
from evaluations import fid as fid_cli
from scripts import image_sample, image_train
from tests.bad_inputs import message_lines, sampling_argv, training_argv, write_images

# Updates 1..10: 8 skipped, never 4 in a row (the stop rule), the last two skipped.
SKIPPED = {1, 2, 3, 5, 6, 7, 9, 10}


@pytest.mark.parametrize("skipped, healthy", [(5, True), (6, False), (10, False), (1, True)])
def test_the_rule_is_a_fraction_of_the_updates_since_the_save(skipped, healthy):
    watch = DivergenceWatch("fp32")
    for update in range(10):
        watch.step_done(took_step=update >= skipped)
    health = watch.health([], step=10)
    assert health["healthy"] is healthy and health["skipped_updates"] == skipped
    assert "--max_skipped_fraction 0.5" in health["rule"]


def test_fp16s_loss_scale_search_is_not_unhealthy():
    watch = DivergenceWatch("fp16")
    for update in range(30):
        watch.step_done(took_step=update >= 20)
    assert watch.health([], step=30)["healthy"]


def test_the_fraction_is_a_flag():
    watch = DivergenceWatch("fp32", {"max_skipped_fraction": 0.9})
    for update in range(10):
        watch.step_done(took_step=update >= 8)
    assert watch.health([], step=10)["healthy"]
    with pytest.raises(ValueError, match=r"--max_skipped_fraction 1: expected a fraction in \[0, 1\)"):
        DivergenceWatch("fp32", {"max_skipped_fraction": 1.0})


def test_a_run_with_most_updates_skipped_ends_non_zero_and_its_set_is_not_sampled(tmp_path, monkeypatch, capsys, caplog):
    decide = host_sync.step_decision
    updates = []

    def skipping(*args, **kwargs):
        square_sum, all_finite, stop = decide(*args, **kwargs)
        updates.append(len(updates) + 1)
        return square_sum, all_finite and updates[-1] not in SKIPPED, stop

    monkeypatch.setattr(train_util.host_sync, "step_decision", skipping)
    run = tmp_path / "run"
    argv = training_argv(write_images(tmp_path / "data", 4), run, "--max_steps", 10, "--save_interval", 10)
    capsys.readouterr()
    assert image_train.main(argv) == 1
    lines = message_lines(capsys.readouterr().err)
    manifest = run / "checkpoint000010.json"
    assert len(lines) == 1 and lines[0].startswith(f"image_train.py: error: the last checkpoint set (step 10, {manifest}) "
                                                   "is unhealthy: 8 of the 10 updates since step 0 were skipped"), lines
    assert lines[0].endswith("no healthy checkpoint is in the log dir; lower --lr and start afresh")
    health = json.loads(manifest.read_text())["health"]
    assert (health["healthy"], health["skipped_updates"], health["steps_since_last_save"]) == (False, 8, 10)
    assert health["rule"].startswith("unhealthy when the parameters are not all finite or more than 0.5 of the updates")

    out = tmp_path / "out"
    assert image_sample.main(sampling_argv(run / "ema_0.9999_000010.pt", out)) == 1
    lines = message_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{manifest} marks this checkpoint set unhealthy (8 of the 10 updates" in lines[0]
    assert "--allow_unhealthy True" in lines[0] and not out.exists()
    assert image_sample.main(sampling_argv(run / "ema_0.9999_000010.pt", out, "--allow_unhealthy", True)) == 0
    recorded = json.loads((out / "sampling.json").read_text())["checkpoint_unhealthy"]
    assert recorded.startswith("8 of the 10 updates since step 0 were skipped")

    # Evaluating those samples says so, in one line before the metrics.
    monkeypatch.setattr(fid_cli, "evaluate", lambda *args, **kwargs: dict(
        num_samples=2, fid=1.0, fid_std=None, sfid=None, **{"is": None}, is_std=None, kid=None, kid_std=None,
        precision=None, recall=None, inception_weights="stand-in", missing={}))
    samples = next(out.glob("samples_*.npz"))
    caplog.clear()
    assert fid_cli.main(["--samples", str(samples), "--ref", str(samples), "--results", "", "--cache_dir", ""]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [f"warning: --samples {samples} come from a checkpoint its training manifest marks unhealthy "
                     f"({recorded}); their metrics describe a diverged run"]


# ---- an interrupt at any point of a checkpoint save ----------------------------------------------------


@pytest.mark.parametrize("write_number", [1, 3, 40, -1])
def test_sigint_during_a_checkpoint_write_is_the_one_line_interrupt(tmp_path, monkeypatch, capsys, write_number):
    """SIGINT sent from inside the writer at its Nth write (-1: during the manifest, after every .pt file)."""
    import os
    import signal

    import torch

    from guided_diffusion.run import atomic, checkpoint, job

    writes = []
    hashing_write = atomic._HashingWriter.write

    def signalling_write(self, data):
        writes.append(len(data))
        if len(writes) == write_number:
            os.kill(os.getpid(), signal.SIGINT)
        return hashing_write(self, data)

    monkeypatch.setattr(atomic._HashingWriter, "write", signalling_write)
    if write_number == -1:
        text_write = atomic.atomic_write_text

        def signalling_text_write(path, text):
            os.kill(os.getpid(), signal.SIGINT)
            return text_write(path, text)

        monkeypatch.setattr(checkpoint, "atomic_write_text", signalling_text_write)
    state = {f"w{i}": torch.ones(1000) for i in range(20)}

    def save():
        checkpoint.save_checkpoint(str(tmp_path), 7, model_state=state, ema_states={0.9999: state}, opt_state=state,
                                   manifest={})

    assert job.run_main(save, "image_train.py") == 130
    lines = message_lines(capsys.readouterr().err)
    assert len(writes) >= max(write_number, 3)
    assert len(lines) == 1 and lines[0].startswith("image_train.py: error: interrupted"), lines
    if write_number > 0:
        assert lines[0].startswith(f"image_train.py: error: interrupted while writing {tmp_path}/")
        assert lines[0].endswith(".pt, which was not kept")
    assert sorted(os.listdir(tmp_path)) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_json_file_as_model_path_is_one_line_without_torchs_advice(tmp_path, capsys):
    manifest = tmp_path / "checkpoint000004.json"
    manifest.write_text('{"step": 4}\n')
    assert image_sample.main(sampling_argv(manifest, tmp_path / "out")) == 1
    lines = message_lines(capsys.readouterr().err)
    assert lines == [f"image_sample.py: error: checkpoint {manifest}: not a readable PyTorch file "
                     "(UnpicklingError: its content is not a saved state dict of tensors)"], lines
