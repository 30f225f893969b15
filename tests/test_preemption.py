"""Preemption, retention, sampling shards and the start-up device check.

Training stops on SIGUSR1 at a step all ranks agree on, checkpoints and exits 75, and
resumes on the same loss curve; retention keeps exactly the sets it promises across a
resume; sampling shards merge to the bytes of one job, and a signal leaves only whole
batch files.
"""

import csv
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

from guided_diffusion import dist_util, sampling
from guided_diffusion.run import device_health, sample_store
from guided_diffusion.run.checkpoint import find_latest_checkpoint, save_checkpoint
from guided_diffusion.run.preemption import REQUEUE_EXIT_CODE
from guided_diffusion.run.retention import prune_checkpoints, steps_to_delete
from scripts import image_sample, image_train
from tests.test_sampling import batch_ranges, run_library, sampling_flags, save_tiny_checkpoint, script_command, script_env
from tests.test_training import image_names, tiny_loop
from tests.tiny import TINY_8X8, flag_list

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


# ---- training stops on a signal ----------------------------------------------------------------


def training_command(data_dir, log_dir, max_steps, nproc=1, extra=()):
    args = flag_list(TINY_8X8) + ["--data_dir", str(data_dir), "--log_dir", str(log_dir), "--batch_size", "2"]
    args += ["--lr", "1e-3", "--max_steps", str(max_steps), "--save_interval", "1000", "--log_interval", "1"]
    args += ["--num_workers", "1", "--resume_checkpoint", "auto", *extra]
    command = [sys.executable, "-m", "scripts.image_train"] + args
    return [str(MPIEXEC), "-n", str(nproc)] + command if nproc > 1 else command


def training_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "PMI_SIZE"):
        env.pop(var, None)
    return env


def progress_steps(log_dir):
    path = Path(log_dir) / "progress.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("step")]


def signal_when(process, ready, pids, timeout=120):
    """Send SIGUSR1 to `pids()` once `ready()` holds; returns nothing, fails if the run ends first."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.05)
    for pid in pids():
        os.kill(pid, signal.SIGUSR1)


def test_sigusr1_checkpoints_exits_75_and_the_resume_continues_the_curve(image_folder_factory, tmp_path):
    data, run = image_folder_factory(image_names(4), size=(8, 8)), tmp_path / "run"
    process = subprocess.Popen(training_command(data, run, 10000), cwd=REPO, env=training_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signal_when(process, lambda: len(progress_steps(run)) >= 3, lambda: [process.pid])
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]

    stopped = progress_steps(run)[-1]
    point = find_latest_checkpoint(str(run))
    assert point.step == stopped >= 3
    assert sorted(p.name for p in run.glob("checkpoint*.json")) == [f"checkpoint{stopped:06d}.json"]
    assert f"stopped by a signal at step {stopped}, checkpoint written" in stderr
    log = (run / "log.txt").read_text()
    assert f"stopping at step {stopped}: a rank received SIGUSR1" in log
    assert re.search(r"rank 0/1 \(local 0\) on host \S+: cpu, backend gloo, launcher single", log)
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]

    # The requeued job, in-process: the same command line without the interpreter.
    assert image_train.main(training_command(data, run, stopped + 3)[3:]) == 0
    assert progress_steps(run) == list(range(1, stopped + 4))
    with open(run / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["samples"]) for r in rows] == [2 * s for s in range(1, stopped + 4)]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert f"resuming from {run / f'model{stopped:06d}.pt'} at step {stopped}" in (run / "log.txt").read_text()


def rank_pids(log_dir, rank):
    """Pids of processes with `log_dir` in their command line and PMI_RANK=rank (mpich's rank)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(log_dir).encode() in cmdline and f"PMI_RANK={rank}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.mpi
def test_a_signal_to_one_rank_stops_both_at_the_same_step(image_folder_factory, tmp_path):
    data, run = image_folder_factory(image_names(4), size=(8, 8)), tmp_path / "run"
    process = subprocess.Popen(training_command(data, run, 10000, nproc=2, extra=["--num_workers", "0"]), cwd=REPO,
                               env=training_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Only rank 1 hears the signal; rank 0 must stop with it at the step they agree on, or the job would hang.
    signal_when(process, lambda: len(progress_steps(run)) >= 3, lambda: rank_pids(run, 1))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    stopped = progress_steps(run)[-1]
    assert find_latest_checkpoint(str(run)).step == stopped
    log = (run / "log.txt").read_text()
    assert f"stopping at step {stopped}" in log
    assert re.search(r"parameters identical on 2 rank\(s\)", log)
    assert len(re.findall(r"rank \d/2 \(local \d\) on host \S+: cpu, backend gloo, launcher mpi", log)) == 2


class StopAfter:
    """Stands for StopSignals: a signal 'arrives' during step `step`."""

    def __init__(self, loop_ref, step):
        self.loop_ref, self.step = loop_ref, step
        self.signal_name = None

    @property
    def requested(self):
        if self.loop_ref[0].step >= self.step:
            self.signal_name = "SIGTERM"
        return self.signal_name is not None


def test_a_stop_request_ends_the_loop_at_that_step_with_a_checkpoint(tmp_path):
    holder = []
    loop = tiny_loop(tmp_path, max_steps=50, save_interval=4, stop_signals=StopAfter(holder, 6))
    holder.append(loop)
    loop.run_loop()
    assert loop.stopped_by_signal and loop.step == 6
    assert sorted(p.name for p in (tmp_path / "log").glob("checkpoint*.json")) == ["checkpoint000004.json", "checkpoint000006.json"]


# ---- retention -----------------------------------------------------------------------------------


def checkpoint_steps(log_dir):
    """{step: sorted file names} of every checkpoint file in `log_dir`."""
    steps = {}
    for path in Path(log_dir).iterdir():
        match = re.search(r"(\d{6})\.(pt|json)$", path.name)
        if match:
            steps.setdefault(int(match.group(1)), []).append(path.name)
    return {step: sorted(names) for step, names in steps.items()}


def full_set(step):
    return sorted([f"model{step:06d}.pt", f"ema_0.5_{step:06d}.pt", f"opt{step:06d}.pt", f"checkpoint{step:06d}.json"])


def test_retention_keeps_the_newest_and_every_multiple_across_a_resume(tmp_path):
    loop = tiny_loop(tmp_path, max_steps=6, save_interval=1, keep_checkpoints=2, keep_every=4)
    loop.run_loop()
    assert checkpoint_steps(tmp_path / "log") == {4: full_set(4), 5: full_set(5), 6: full_set(6)}
    resumed = tiny_loop(tmp_path, max_steps=9, save_interval=1, keep_checkpoints=2, keep_every=4, resume_checkpoint="auto")
    assert resumed.step == 6
    resumed.run_loop()
    assert checkpoint_steps(tmp_path / "log") == {4: full_set(4), 8: full_set(8), 9: full_set(9)}
    assert "deleted checkpoint set(s) at step(s) 7 (--keep_checkpoints 2, --keep_every 4)" in (tmp_path / "log" / "log.txt").read_text()


def test_default_keeps_every_set_like_adm(tmp_path):
    tiny_loop(tmp_path, max_steps=3, save_interval=1).run_loop()
    assert sorted(checkpoint_steps(tmp_path / "log")) == [1, 2, 3]


def test_pruning_spares_sets_being_written_and_files_without_a_manifest(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(str(tmp_path), step, model_state={}, ema_states={0.5: {}}, opt_state={}, manifest={})
    (tmp_path / "opt000020.pt").unlink()  # an interrupted deletion: incomplete, not resumable
    (tmp_path / "model000005.pt").write_bytes(b"ADM's, no manifest")
    (tmp_path / "model000050.pt").write_bytes(b"being written")
    assert steps_to_delete({10: True, 20: False, 30: True, 40: True, 50: False}, 2, 0) == [10, 20]
    assert prune_checkpoints(str(tmp_path), keep_checkpoints=2) == [10, 20]
    assert checkpoint_steps(tmp_path) == {5: ["model000005.pt"], 30: full_set(30), 40: full_set(40), 50: ["model000050.pt"]}
    assert prune_checkpoints(str(tmp_path), keep_checkpoints=0) == []


@pytest.mark.parametrize("flag, value", [("keep_checkpoints", -1), ("keep_every", -5)])
def test_negative_retention_flags_are_refused(tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"--{flag} must be 0"):
        tiny_loop(tmp_path, **{flag: value})


# ---- sampling shards -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def sample_argv(model_path, out_dir, **overrides):
    return [item for key, value in sampling_flags(model_path, out_dir, **overrides).items() for item in (f"--{key}", str(value))]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_three_shards_merge_to_the_bytes_of_one_job(tiny_checkpoint, tmp_path, capsys, order):
    whole, _ = run_library(tiny_checkpoint, tmp_path / "whole")
    shared = tmp_path / "shards"
    for position, shard in enumerate(order):
        assert image_sample.main(sample_argv(tiny_checkpoint, shared, shard=shard, num_shards=3)) == 0
        out = capsys.readouterr().out
        merged = shared / "samples_10x8x8x3.npz"
        assert merged.exists() == (position == 2), out
        if position < 2:
            assert f"shard {shard} of 3 done" in out and "the last to finish merges" in out
    # Grid batches [0,3) [3,6) [6,9) [9,10): shard i takes batches k with k % 3 == i.
    assert batch_ranges(shared) == [(0, 2), (3, 5), (6, 8), (9, 9)]
    assert merged.read_bytes() == Path(whole["npz"]).read_bytes()


def test_two_shards_merging_at_once_write_the_same_bytes(tiny_checkpoint, tmp_path, monkeypatch):
    flags = sampling_flags(tiny_checkpoint, tmp_path, num_shards=2)
    sampling.sample_to_dir({**flags, "shard": 0}, progress=False)
    result = sampling.sample_to_dir({**flags, "shard": 1}, progress=False)
    first = Path(result["npz"]).read_bytes()
    # The other shard saw every index too and merges over the first merge, as a race would have it.
    real_exists = os.path.exists
    monkeypatch.setattr(sampling.os.path, "exists", lambda p: False if str(p).endswith(".npz") else real_exists(p))
    again = sampling.sample_to_dir({**flags, "shard": 0}, progress=False)
    assert again["images_sampled"] == 0 and Path(again["npz"]).read_bytes() == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_bad_shard_flags_are_one_line_errors(tiny_checkpoint, tmp_path, capsys):
    assert image_sample.main(sample_argv(tiny_checkpoint, tmp_path, shard=3, num_shards=3)) == 1
    assert capsys.readouterr().err.strip() == "image_sample.py: error: --shard 3 --num_shards 3: expected 0 <= shard < num_shards"


def test_a_signal_leaves_only_whole_batch_files_and_the_rerun_completes(tiny_checkpoint, tmp_path):
    flags = sampling_flags(tiny_checkpoint, tmp_path / "signalled", num_samples=8, batch_size=2, timestep_respacing="25")
    process = subprocess.Popen(script_command(flags), env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signal_when(process, lambda: len(batch_ranges(tmp_path / "signalled")) >= 1, lambda: [process.pid])
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == REQUEUE_EXIT_CODE, stderr[-3000:]
    assert "stopped by SIGUSR1; every batch file on disk is complete" in stderr
    batch_dir = tmp_path / "signalled" / "batches"
    assert not [p for p in batch_dir.iterdir() if p.name.startswith(".tmp-")]
    done = batch_ranges(tmp_path / "signalled")
    assert 1 <= len(done) < 4
    for first, last, path in sample_store.scan_batch_files(str(batch_dir)):
        images, _ = sample_store.read_batch_file(path, first, last)
        assert images.shape == (last - first + 1, 8, 8, 3)

    rerun, _ = run_library(tiny_checkpoint, tmp_path / "signalled", **{k: v for k, v in flags.items() if k not in ("model_path", "out_dir")})
    assert rerun["images_sampled"] == 8 - sum(last - first + 1 for first, last in done)
    whole, _ = run_library(tiny_checkpoint, tmp_path / "whole", **{k: v for k, v in flags.items() if k not in ("model_path", "out_dir")})
    assert Path(rerun["npz"]).read_bytes() == Path(whole["npz"]).read_bytes()


# ---- devices and launchers -----------------------------------------------------------------------


def test_a_rank_without_the_gpu_it_needs_names_its_host():
    host = device_health.socket.gethostname()
    with pytest.raises(device_health.DeviceError, match=rf"^host {re.escape(host)} \(rank 3\): --device cuda but CUDA sees no GPU"):
        device_health.use_cuda("cuda", 3, {}, cuda_available=False)
    slurm_gpus = {"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": ""}
    with pytest.raises(device_health.DeviceError, match=r"SLURM allocated GPUs \(SLURM_GPUS_ON_NODE=4\).*CUDA_VISIBLE_DEVICES=''"):
        device_health.use_cuda("", 0, slurm_gpus, cuda_available=False)
    assert device_health.use_cuda("cpu", 0, slurm_gpus, cuda_available=True) is False
    assert device_health.use_cuda("", 0, {}, cuda_available=False) is False
    assert device_health.use_cuda("", 0, {"SLURM_GPUS_ON_NODE": "0"}, cuda_available=False) is False
    assert device_health.use_cuda("CUDA", 0, {}, cuda_available=True) is True
    with pytest.raises(ValueError, match="bad --device 'tpu'"):
        device_health.use_cuda("tpu", 0, {})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_stops_training_with_one_line(tmp_path, capsys):
    dist_util.cleanup()  # a group left by an in-process script would skip the check
    assert image_train.main(["--data_dir", str(tmp_path), "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("image_train.py: error: host ") and "--device cuda" in err


@pytest.mark.parametrize(
    "environ, kind",
    [
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1"}, "slurm"),
        # The batch step of a job (no srun): SLURM_PROCID=0 but no rendezvous address.
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}, "single"),
        # mpiexec inside an allocation: MPI's rank wins over the batch step's SLURM_PROCID.
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "MASTER_ADDR": "n1", "MASTER_PORT": "1", "PMI_RANK": "3"}, "mpi"),
        ({"RANK": "2", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "MASTER_ADDR": "n1", "MASTER_PORT": "1", "SLURM_PROCID": "0"}, "torchrun"),
    ],
)
def test_launcher_detection_reads_slurm_after_torchrun_and_mpi(environ, kind):
    assert dist_util.detect_launcher(environ) == kind


def test_sampling_logs_each_rank_device(tiny_checkpoint, tmp_path, capsys):
    run_library(tiny_checkpoint, tmp_path, num_samples=2)
    assert re.search(r"^rank 0/1 \(local 0\) on host \S+: cpu, backend none, launcher single$", capsys.readouterr().out, re.M)
    assert json.loads((tmp_path / "sampling.json").read_text())["flags"]["num_shards"] == 1
