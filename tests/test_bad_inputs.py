"""Reliability: every failure ends the job with one line, and a run that resumes leaves nothing behind.

The bad inputs themselves are in tests/bad_inputs.py and tests/bad_inputs_more.py (also run as a census).
The tests after them check what a resume restores and removes, the file modes, the
records, and (marked mpi) what happens to processes: a full disk under mpiexec,
kill -9 during saves, a launcher that dies.
"""

import contextlib
import csv
import errno
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluations import fid as fid_cli
from evaluations import ref_stats
from guided_diffusion.run import checkpoint, run_lock, sample_store
from guided_diffusion.run.atomic import TEMP_PREFIX, atomic_write_bytes
from guided_diffusion.run.checkpoint import save_checkpoint
from scripts import image_sample, image_train
from tests.bad_inputs import (
    HOST,
    Materials,
    Unavailable,
    all_cases,
    check_applicable,
    message_lines,
    mount_tmpfs,
    run_in_process,
    sampling_argv,
    training_argv,
)

REPO = Path(__file__).resolve().parents[1]
CASES = all_cases()
BIN = Path(sys.executable).parent
# Logs a failed run may leave beside its outputs; everything else new would be an output.
LOG_FILES = {"log.txt", "progress.csv"}


@pytest.fixture(scope="module")
def materials(tmp_path_factory):
    return Materials(tmp_path_factory.mktemp("materials"))


def files_under(root):
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file()}


def file_states(root):
    """{relative path: (bytes, mtime_ns)} of every file under `root` but the logs a failed run may append to."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(root).rglob("*")
            if p.is_file() and p.name not in LOG_FILES}


def temp_files(root):
    return sorted(str(p) for p in Path(root).rglob(f"{TEMP_PREFIX}*"))


def progress_steps(log_dir):
    with open(Path(log_dir) / "progress.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


# ---- bad inputs: one line naming the culprit ---------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_ends_in_one_line_naming_the_culprit(case, materials, tmp_path, capsys):
    with contextlib.ExitStack() as hold:
        try:
            check_applicable(case)
            argv, culprits = case.build(materials, tmp_path, hold)
        except Unavailable as reason:
            pytest.skip(str(reason))
        before, states = files_under(tmp_path), file_states(tmp_path)
        capsys.readouterr()
        code = run_in_process(case, argv)
        stderr = capsys.readouterr().err
        after, changed = files_under(tmp_path), file_states(tmp_path)
    lines = message_lines(stderr)
    assert code != 0
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert all(culprit in lines[0] for culprit in culprits), (culprits, lines[0])
    new_outputs = sorted(name for name in after - before if Path(name).name not in LOG_FILES and not any(fnmatch.fnmatch(name, pattern) for pattern in case.may_leave))
    assert new_outputs == [], new_outputs
    # A run refused before its first logged step takes its set-up log with the log dir it made.
    new_logs = sorted(name for name in after - before if Path(name).name in LOG_FILES
                      and not any(fnmatch.fnmatch(name, pattern) for pattern in case.may_leave))
    assert new_logs == [], new_logs
    rewritten = sorted(name for name, state in states.items() if changed.get(name) != state)
    assert rewritten == [], rewritten


def test_there_are_at_least_forty_bad_inputs():
    assert len(CASES) >= 40 and len({case.name for case in CASES}) == len(CASES)


# ---- resuming ----------------------------------------------------------------------------------------


def resume(materials, run, max_steps, capsys):
    code = image_train.main(training_argv(materials.data, run, "--resume_checkpoint", "auto", "--max_steps", max_steps))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return (run / "log.txt").read_text()


def test_auto_resume_passes_over_a_truncated_newest_model_and_drops_redone_rows(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    assert progress_steps(run) == [2, 4]
    (run / "model000004.pt").write_bytes((run / "model000004.pt").read_bytes()[:1000])
    log = resume(materials, run, 6, capsys)
    skipped = [line for line in log.splitlines() if line.startswith("WARNING:")]
    assert len(skipped) == 1
    assert "step 4 (model000004.pt holds 1,000 bytes where its manifest records" in skipped[0]
    assert skipped[0].endswith("resuming from step 2")
    assert f"resuming from {run / 'model000002.pt'} at step 2" in log
    assert "dropped 1 row(s) past step 2" in log
    assert progress_steps(run) == [2, 4, 6]
    manifest = json.loads((run / "checkpoint000006.json").read_text())
    assert manifest["step"] == 6 and len(manifest["sha256"]) == 3 and manifest["model_sha1"]


@pytest.mark.parametrize("damage", ["replaced_model", "corrupt_manifest", "legacy_manifest_replaced_model"])
def test_auto_resume_never_accepts_a_changed_set_silently(materials, tmp_path, capsys, damage):
    run = materials.run_copy(tmp_path)
    manifest_path = run / "checkpoint000004.json"
    if damage == "corrupt_manifest":
        manifest_path.write_text("{ not json")
        reason = "checkpoint000004.json: not valid JSON"
    else:
        # Same size, other weights: only the hash can tell.
        (run / "model000004.pt").write_bytes((run / "model000002.pt").read_bytes())
        reason = "model000004.pt does not match the sha256 its manifest records"
        if damage == "legacy_manifest_replaced_model":
            record = json.loads(manifest_path.read_text())
            del record["sha256"], record["bytes"]
            manifest_path.write_text(json.dumps(record))
            reason = "model000004.pt does not match the model_sha1 its manifest records"
    log = resume(materials, run, 6, capsys)
    assert re.search(r"WARNING: --resume_checkpoint auto: skipped step 4 \(.*" + re.escape(reason), log), log
    assert f"resuming from {run / 'model000002.pt'} at step 2" in log


def test_resume_removes_stale_temps_of_checkpoints_only(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    stale = [run / ".tmp-model000006.pt.k2j4h1x9", run / ".tmp-ema_0.9999_000006.pt.abcdefgh",
             run / ".tmp-opt000006.pt.q1w2e3r4", run / ".tmp-checkpoint000006.json.z9y8x7w6"]
    for path in stale:
        path.write_bytes(b"partial")
    foreign = run / ".tmp-notes.txt.a1b2c3d4"
    foreign.write_bytes(b"someone else's")
    log = resume(materials, run, 6, capsys)
    assert temp_files(run) == [str(foreign)]
    assert f"removed 4 temp file(s) that an interrupted run left in {run}" in log


def test_a_lock_left_by_a_dead_run_is_taken_over_and_released(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    (run / run_lock.LOCK_NAME).write_text(json.dumps({"host": HOST, "pid": 999999, "started": "yesterday"}))
    log = resume(materials, run, 6, capsys)
    assert f"took over the lock of --log_dir {run} from pid 999999 on host {HOST} (started yesterday)" in log
    assert not (run / run_lock.LOCK_NAME).exists()


def test_a_killed_holders_lock_is_free_at_once_though_its_forked_child_lives(tmp_path):
    # DataLoader workers are forked and outlive a killed trainer by seconds; they must not keep the lock.
    code = ("import os, sys, time; from guided_diffusion.run import run_lock; run_lock.acquire(sys.argv[1], 'test'); "
            "child = os.fork()\nif child == 0: time.sleep(30); os._exit(0)\n"
            "print(child, flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=script_env())
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(run_lock.DirectoryLockedError, match=f"pid {holder.pid} on host {HOST}"):
            run_lock.acquire(tmp_path, "--log_dir")
        holder.kill()
        holder.wait()
        lock = run_lock.acquire(tmp_path, "--log_dir")
        took_over = f"took over the lock of --log_dir {tmp_path} from pid {holder.pid} on host {HOST} (started "
        assert len(lock.notes) == 1 and lock.notes[0].startswith(took_over)
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_resumed_sampling_removes_stale_temps(materials, tmp_path, capsys):
    out = tmp_path / "out"
    argv = sampling_argv(materials.model, out, "--num_samples", 4, "--png", True)
    assert image_sample.main(argv) == 0
    merged = out / "samples_4x16x16x3.npz"
    expected = merged.read_bytes()
    merged.unlink()
    (out / "batches" / "batch_0000002_0000003.npz").unlink()
    stale = [out / ".tmp-samples_4x16x16x3.npz.a1b2c3d4", out / "batches" / ".tmp-batch_0000002_0000003.npz.e5f6g7h8",
             out / "png" / ".tmp-000003.png.i9j0k1l2", out / ".tmp-sampling.json.m3n4o5p6"]
    for path in stale:
        path.write_bytes(b"partial")
    capsys.readouterr()
    assert image_sample.main(argv) == 0
    assert "removed 4 temp file(s) that an interrupted run left in" in capsys.readouterr().out
    assert temp_files(out) == [] and merged.read_bytes() == expected


def test_resuming_from_the_newest_model_file_by_name_still_works(materials, tmp_path, capsys):
    run = materials.run_copy(tmp_path)
    code = image_train.main(training_argv(materials.data, run, "--resume_checkpoint", run / "model000004.pt", "--max_steps", 6))
    assert code == 0, capsys.readouterr().err
    assert f"resuming from {run / 'model000004.pt'} at step 4" in (run / "log.txt").read_text()
    assert progress_steps(run) == [2, 4, 6]


def test_sampling_fewer_into_an_out_dir_keeps_its_larger_npz(materials, tmp_path, capsys):
    out = tmp_path / "out"
    assert image_sample.main(sampling_argv(materials.model, out, "--num_samples", 4)) == 0
    merged = out / "samples_4x16x16x3.npz"
    before = file_states(out)
    capsys.readouterr()
    assert image_sample.main(sampling_argv(materials.model, out, "--num_samples", 2)) == 1
    lines = message_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"image_sample.py: error: --out_dir {out} already holds {merged.name}")
    assert "--num_samples 2" in lines[0] and "arr_0[:2]" in lines[0]
    assert file_states(out) == before


def test_a_merge_removes_only_smaller_merges(tmp_path):
    for count in (2, 4, 8):
        (tmp_path / f"samples_{count}x8x8x3.npz").write_bytes(b"npz")
    sample_store.remove_other_merges(str(tmp_path), str(tmp_path / "samples_4x8x8x3.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples_4x8x8x3.npz", "samples_8x8x8x3.npz"]


def test_a_checkpoint_set_that_fills_the_disk_part_way_is_removed(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    # The free-space check passes (as when another writer fills the disk meanwhile); the third file does not fit.
    monkeypatch.setattr(checkpoint, "check_free_space", lambda *args: None)
    state = {"w": torch.zeros(300_000)}
    with contextlib.ExitStack() as hold:
        try:
            small = mount_tmpfs(hold, tmp_path / "small")
        except Unavailable as reason:
            pytest.skip(str(reason))
        with pytest.raises(OSError) as failure:
            save_checkpoint(str(small), 1, model_state=state, ema_states={0.9999: state}, opt_state=state, manifest={})
        left = sorted(os.listdir(small))
    message = str(failure.value)
    assert re.fullmatch(rf"disk full: cannot write {small}/\S+000001\.pt \(needs about 1\.2 MB \(1,200,000 bytes\), "
                        r".+ free\); nothing was written under that name", message), message
    assert left == []


# ---- files and records -------------------------------------------------------------------------------


WRITERS = {
    "checkpoint": lambda d: save_checkpoint(str(d), 1, model_state={"w": torch.ones(2)}, ema_states={0.9999: {"w": torch.ones(2)}},
                                            opt_state={}, manifest={}),
    "sample batch": lambda d: sample_store.write_batch_file(str(d), 0, np.zeros((2, 4, 4, 3), np.uint8)),
    "reference statistics": lambda d: ref_stats.save_statistics(str(d / "ref.npz"), np.zeros(2), np.eye(2), 2),
    "dataset image": lambda d: atomic_write_bytes(d / "img.png", b"png bytes"),
}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
@pytest.mark.parametrize("writer", WRITERS)
def test_files_honour_the_umask(tmp_path, writer, umask, mode):
    previous = os.umask(umask)
    try:
        WRITERS[writer](tmp_path)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes and set(modes.values()) == {mode}, modes


def test_a_failed_evaluation_records_nothing(materials, tmp_path, monkeypatch, capsys):
    canned = {"fid": 1.5, "fid_std": None, "sfid": None, "missing": {}, "num_samples": 4, "is": None, "is_std": None,
              "kid": None, "kid_std": None,
              "precision": None, "recall": None, "inception_weights": "w.pth"}
    monkeypatch.setattr(fid_cli, "evaluate", lambda *args, **kwargs: canned)

    def registry_that_fails(path, record):
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(fid_cli, "append_result", registry_that_fails)
    metrics_out = tmp_path / "metrics.json"
    argv = ["--samples", str(materials.samples), "--ref", str(materials.stats), "--results", str(tmp_path / "r.jsonl"),
            "--metrics_out", str(metrics_out)]
    assert fid_cli.main(argv) == 2
    assert message_lines(capsys.readouterr().err) == [f"error: {tmp_path / 'r.jsonl'}: Input/output error"]
    assert not metrics_out.exists()


# ---- processes ---------------------------------------------------------------------------------------


def script_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "PMI_SIZE"):
        env.pop(var, None)
    return env


def kill_during_a_write(command, watched, first_file, timeout=120):
    """Start `command`; once `watched` holds a file matching `first_file`, SIGKILL it as soon as a temp file shows up there."""
    process = subprocess.Popen(command, cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    caught = []
    try:
        deadline = time.time() + timeout
        while not list(Path(watched).glob(first_file)) and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        while not caught and process.poll() is None and time.time() < deadline:
            with contextlib.suppress(FileNotFoundError):
                caught = [name for name in os.listdir(watched) if name.startswith(TEMP_PREFIX)]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return caught


@pytest.mark.mpi
def test_killed_training_resumes_from_a_complete_set_and_leaves_no_temp(materials, tmp_path, capsys):
    run = tmp_path / "run"
    argv = training_argv(materials.data, run, "--save_interval", 1, "--max_steps", 1000)
    caught = kill_during_a_write([sys.executable, "-m", "scripts.image_train", *argv], run, "checkpoint*.json")
    assert caught, "the run never wrote a checkpoint"
    left = temp_files(run)  # usually the write in flight; none if the kill came just after its rename
    newest = max(int(p.stem[len("checkpoint"):]) for p in run.glob("checkpoint*.json"))
    log = resume(materials, run, newest + 1, capsys)
    assert f"resuming from {run / f'model{newest:06d}.pt'} at step {newest}" in log
    assert (f"removed {len(left)} temp file(s) that an interrupted run left" in log) == bool(left)
    assert temp_files(run) == []
    steps = progress_steps(run)
    assert steps == sorted(set(steps))


@pytest.mark.mpi
def test_killed_sampling_resumes_and_leaves_no_temp(materials, tmp_path, capsys):
    out = tmp_path / "out"
    argv = sampling_argv(materials.model, out, "--num_samples", 40, "--batch_size", 1, "--timestep_respacing", 10)
    caught = kill_during_a_write([sys.executable, "-m", "scripts.image_sample", *argv], out / "batches", "batch_*.npz")
    assert caught, "the run never wrote a batch"
    assert image_sample.main(argv) == 0
    assert temp_files(out) == []
    assert (out / "samples_40x16x16x3.npz").exists()


@pytest.mark.mpi
def test_mpiexec_disk_full_ends_the_job_by_itself_within_60_s(materials, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    with contextlib.ExitStack() as hold:
        try:
            log_dir = mount_tmpfs(hold, tmp_path / "small") / "run"
        except Unavailable as reason:
            pytest.skip(str(reason))
        argv = training_argv(materials.data, log_dir, "--save_interval", 3, "--max_steps", 20)
        started = time.time()
        done = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, "-m", "scripts.image_train", *argv],
                              cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=60)
        elapsed = time.time() - started
        leftovers = temp_files(log_dir)
    assert done.returncode != 0 and elapsed < 60
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("image_train.py: error:")]
    # Rank 0 says why; rank 1 is ended by MPI_Abort, or may first notice that rank 0 went away.
    full = [line for line in errors if "disk full" in line and str(log_dir) in line]
    assert len(full) == 1 and all(line in full or "lost contact with another rank" in line for line in errors), done.stderr
    assert leftovers == []


def is_running(pid):
    """Whether `pid` runs (a zombie that nobody reaped yet has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.mpi
def test_a_rank_exits_when_its_launcher_dies(tmp_path):
    # A stand-in launcher starts one "rank" that watches it; kill -9 of the launcher must end the rank.
    watching = tmp_path / "watching"
    rank_code = ("import os, sys, time; from guided_diffusion import dist_util; "
                 "dist_util.exit_when_parent_dies(os.getppid(), 'rank 0: launcher gone', poll_seconds=0.1); "
                 "open(sys.argv[1], 'w').close(); time.sleep(120)")
    launcher_code = ("import subprocess, sys, time; "
                     f"p = subprocess.Popen([sys.executable, '-c', {rank_code!r}, {str(watching)!r}]); "
                     "print(p.pid, flush=True); time.sleep(120)")
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], cwd=REPO, env=script_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rank_pid = int(launcher.stdout.readline())
    deadline = time.time() + 60
    while not watching.exists() and time.time() < deadline:
        time.sleep(0.05)
    launcher.kill()
    launcher.wait()
    killed_at = time.time()
    while is_running(rank_pid) and time.time() < killed_at + 10:
        time.sleep(0.05)
    if is_running(rank_pid):
        os.kill(rank_pid, signal.SIGKILL)
        pytest.fail("the rank outlived its launcher by 10 s")
