"""What a run keeps of its own files: divergence never costs the last healthy checkpoint, a resume keeps
the network and objective unless told otherwise, sample batches name the run that made them, FID compares
like resolutions, and Ctrl-C during a save leaves no part of a set."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from evaluations import fid as fid_cli
from evaluations import ref_stats
from guided_diffusion.run import checkpoint, sample_store
from guided_diffusion.run.divergence import health_rule
from guided_diffusion.run.retention import steps_to_delete
from guided_diffusion.run.sample_store import RUN_FILE, read_batch_identity
from scripts import image_sample, image_train
from tests.bad_inputs import Materials, message_lines, sampling_argv, training_argv


@pytest.fixture(scope="module")
def materials(tmp_path_factory):
    return Materials(tmp_path_factory.mktemp("materials"))


def manifest(run, step):
    return json.loads((Path(run) / checkpoint.manifest_filename(step)).read_text())


def states(root):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(root).iterdir()
            if p.is_file() and p.name not in ("log.txt", "progress.csv")}


def one_error_line(capsys):
    lines = message_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


# ---- divergence -------------------------------------------------------------------------------------


def test_a_diverging_run_stops_keeps_its_healthy_set_and_auto_resumes_from_it(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    argv = training_argv(materials.data, run, "--resume_checkpoint", "auto", "--lr", "1e3", "--max_steps", 16,
                         "--keep_checkpoints", 1)
    code = image_train.main(argv)
    line = one_error_line(capsys)
    assert code == 1
    assert line == (
        "image_train.py: error: training diverged at step 10: the last 5 updates were all skipped for a non-finite "
        "loss or gradient; nothing was saved for step 10; the last healthy checkpoint is step 4 "
        f"({run / 'checkpoint000004.json'}); lower --lr and resume from it (--resume_checkpoint auto picks it)"
    )
    # Step 6 ended on a skipped update and every update after it was skipped: it went, the healthy 4 stayed.
    assert sorted(p.name for p in run.glob("checkpoint*.json")) == ["checkpoint000004.json", "checkpoint000008.json"]
    assert not list(run.glob("*000010*"))
    diverged = manifest(run, 8)["health"]
    assert diverged["healthy"] is False and diverged["skipped_updates"] == 2
    assert checkpoint.marked_diverged(manifest(run, 8)) == (
        "2 of the 2 updates since step 6 were skipped for a non-finite loss or gradient (more than "
        "--max_skipped_fraction 0.5)"
    )

    point = checkpoint.resolve_resume_checkpoint("auto", str(run))
    assert point.step == 4
    assert point.note == ("--resume_checkpoint auto: skipped step 8 (diverged: 2 of the 2 updates since step 6 were "
                          "skipped for a non-finite loss or gradient (more than --max_skipped_fraction 0.5)); "
                          "resuming from step 4")
    assert image_train.main(training_argv(materials.data, run, "--resume_checkpoint", "auto")) == 0
    capsys.readouterr()
    assert manifest(run, 6)["health"] == dict(
        healthy=True, reason=None, params_finite=True, steps_since_last_save=2, skipped_updates=0, consecutive_skipped=0,
        step=6, rule=health_rule(0.5),
    )


def test_a_fresh_run_that_diverges_at_once_has_no_healthy_set_to_name(materials, tmp_path, capsys):
    run = tmp_path / "run"
    code = image_train.main(training_argv(materials.data, run, "--lr", "1e3", "--max_steps", 12, "--keep_checkpoints", 1))
    assert code == 1
    assert one_error_line(capsys).endswith(
        "training diverged at step 6: the last 4 updates were all skipped for a non-finite loss or gradient; nothing "
        "was saved for step 6; no healthy checkpoint is in the log dir; lower --lr and start afresh"
    )
    with pytest.raises(checkpoint.CheckpointError, match=r"no usable checkpoint .* step 4 \(diverged: 2 of the 2 updates since step 2"):
        checkpoint.resolve_resume_checkpoint("auto", str(run))


def test_a_healthy_run_records_its_health(materials):
    for step in (2, 4):
        health = manifest(materials.run, step)["health"]
        assert health["healthy"] is True and health["skipped_updates"] == 0 and health["params_finite"] is True


def test_retention_never_deletes_the_newest_healthy_set():
    sets = {2: True, 4: True, 6: True, 8: True}
    assert steps_to_delete(sets, 1, 0, healthy={2, 4}) == [2, 6]
    records = {step: {"step": step, "health": {"healthy": True, "consecutive_skipped": 0}} for step in (2, 4)}
    records[6] = {"step": 6, "health": {"healthy": True, "consecutive_skipped": 1, "steps_since_last_save": 2}}
    records[8] = {"step": 8, "health": {"healthy": False, "reason": "x", "skipped_updates": 2, "steps_since_last_save": 2}}
    assert checkpoint.diverged_sets(records) == {8: "x", 6: "every update after it was skipped (checkpoint000008.json)"}
    assert checkpoint.healthy_steps(records) == [2, 4]
    assert steps_to_delete(sets, 1, 0, healthy={2, 4, 6, 8}) == [2, 4, 6]
    assert steps_to_delete(sets, 1, 0) == [2, 4, 6]  # no health record: as before


# ---- changed flags on resume ------------------------------------------------------------------------


def test_an_allowed_change_is_made_and_recorded_in_the_new_manifest(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    argv = training_argv(materials.data, run, "--resume_checkpoint", "auto", "--allow_changed_flags", "noise_schedule",
                         "--noise_schedule", "cosine")
    assert image_train.main(argv) == 0, capsys.readouterr().err
    record = manifest(run, 6)
    assert record["flags"]["noise_schedule"] == "cosine"
    assert record["flag_changes"] == [{"step": 4, "flag": "noise_schedule", "from": "linear", "to": "cosine"}]
    assert "--allow_changed_flags: --noise_schedule cosine (checkpoint at step 4: linear)" in (run / "log.txt").read_text()


def test_a_refused_change_names_the_flag_both_values_and_the_manifest(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    before = states(run)
    code = image_train.main(training_argv(materials.data, run, "--resume_checkpoint", "auto", "--diffusion_steps", 200))
    assert code == 1
    assert one_error_line(capsys) == (
        "image_train.py: error: resume changes the network or objective: --diffusion_steps 200 (checkpoint: 100), "
        f"against the manifest {run / 'checkpoint000004.json'}; give the checkpoint's value, or pass "
        "--allow_changed_flags diffusion_steps to fine-tune with the change"
    )
    assert states(run) == before


# ---- Ctrl-C during a save -----------------------------------------------------------------------------


def test_ctrl_c_during_a_checkpoint_save_ends_in_one_line_and_leaves_no_part_of_the_set(
    materials, tmp_path, capsys, monkeypatch
):
    run = materials.run_copy(tmp_path)
    before = states(run)
    real_save = checkpoint.atomic_torch_save

    def interrupted_at_the_optimizer(state, path):
        if os.path.basename(path) == "opt000006.pt":
            raise KeyboardInterrupt
        return real_save(state, path)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", interrupted_at_the_optimizer)
    code = image_train.main(training_argv(materials.data, run, "--resume_checkpoint", "auto"))
    assert code == 130
    assert one_error_line(capsys) == (
        "image_train.py: error: interrupted while saving the checkpoint at step 6: none of its files was left "
        "(the newest complete set is step 4); resume with --resume_checkpoint auto"
    )
    assert states(run) == before
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]


# ---- sample batches ----------------------------------------------------------------------------------


def test_batches_carry_the_runs_identity_and_a_copied_one_is_refused(materials, tmp_path, capsys):
    other, out = tmp_path / "other", tmp_path / "out"
    assert image_sample.main(sampling_argv(materials.model, other, "--num_samples", 4, "--seed", 1)) == 0
    assert image_sample.main(sampling_argv(materials.model, out)) == 0
    capsys.readouterr()
    run = json.loads((out / RUN_FILE).read_text())
    assert run["stamped_batches"] is True
    assert read_batch_identity(out / "batches" / "batch_0000000_0000001.npz") == run["image_flags"]
    (out / "batches" / "batch_0000002_0000003.npz").write_bytes((other / "batches" / "batch_0000002_0000003.npz").read_bytes())
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert image_sample.main(sampling_argv(materials.model, out, "--num_samples", 4)) != 0
    line = one_error_line(capsys)
    assert line.startswith(f"image_sample.py: error: --out_dir {out}: batches/batch_0000002_0000003.npz was made by "
                           "another run than run.json's (seed 1 vs 0, batch vs run)")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_an_out_dir_from_before_batch_identities_is_still_completed(materials, tmp_path, capsys):
    out = tmp_path / "out"
    assert image_sample.main(sampling_argv(materials.model, out)) == 0
    # As the code before batch identities left it: run.json without stamped_batches, batches without identity.
    record = json.loads((out / RUN_FILE).read_text())
    del record["stamped_batches"]
    (out / RUN_FILE).write_text(json.dumps(record))
    batch = out / "batches" / "batch_0000000_0000001.npz"
    with np.load(batch) as data:
        arrays = {key: data[key] for key in ("arr_0", "indices")}
    np.savez(batch, **arrays)
    capsys.readouterr()
    assert image_sample.main(sampling_argv(materials.model, out, "--num_samples", 4)) == 0
    assert f"--out_dir {out}: 1 batch file(s) predate batch identities; kept, as run.json matches this run" in capsys.readouterr().out
    with np.load(out / "samples_4x16x16x3.npz") as merged:
        assert np.array_equal(merged["arr_0"][:2], arrays["arr_0"])


def test_a_merge_refuses_a_batch_of_another_run(tmp_path):
    out = tmp_path / "out"
    (out / "batches").mkdir(parents=True)
    sample_store.claim_out_dir(str(out), {"seed": 0})
    images = np.zeros((2, 4, 4, 3), np.uint8)
    sample_store.write_batch_file(str(out / "batches"), 0, images, identity={"seed": 0})
    assert sample_store.check_batch_identities(str(out), {"seed": 0}) == 0
    sample_store.write_batch_file(str(out / "batches"), 2, images)
    with pytest.raises(sample_store.RunMismatchError, match="batch_0000002_0000003.npz carries no identity"):
        sample_store.check_batch_identities(str(out), {"seed": 0})


# ---- resolution of reference statistics ---------------------------------------------------------------


class _Source:
    image_shape = (8, 8, 3)


def test_reference_statistics_record_their_resolution_and_fid_compares_it(tmp_path):
    stats = tmp_path / "ref.npz"
    ref_stats.save_statistics(str(stats), np.zeros(3), np.eye(3), 5, image_size=(16, 16, 3), extractor="w.pth (9 bytes)")
    assert ref_stats.statistics_image_size(str(stats)) == (16, 16)
    with np.load(stats) as contents:
        assert str(contents["feature_extractor"]) == "w.pth (9 bytes)"
    with pytest.raises(fid_cli.EvaluationError, match=r"are 8x8 images but --ref .* holds statistics of 16x16 images"):
        fid_cli.check_resolution(_Source(), "s.npz", str(stats), allowed=False)
    assert fid_cli.check_resolution(_Source(), "s.npz", str(stats), allowed=True) is None
    old = tmp_path / "old.npz"
    ref_stats.save_statistics(str(old), np.zeros(3), np.eye(3), 5)
    warning = fid_cli.check_resolution(_Source(), "s.npz", str(old), allowed=False)
    assert warning == (f"reference {str(old)!r} does not record the resolution of its images (written before ref_stats "
                       "recorded it, or ADM's): the samples' 8x8 was not checked against it")
