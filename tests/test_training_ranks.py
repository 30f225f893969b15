"""Training under mpiexec and torchrun (two ranks), resumed across world sizes, and a failing rank ending the job."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from tests.test_training import image_names, read_progress, sha1_of_state
from tests.tiny import TINY_MODEL_FLAGS, flag_list

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


TINY_ARGS = flag_list(TINY_MODEL_FLAGS)


def launch(launcher, args, timeout=300):
    script = [str(REPO / "scripts" / "image_train.py")] + TINY_ARGS + [str(a) for a in args]
    if launcher == "mpi":
        argv = [str(BIN / "mpiexec"), "-n", "2", sys.executable] + script
    elif launcher == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + script
    else:
        argv = [sys.executable] + script
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "PMI_SIZE"):
        env.pop(var, None)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_training(launcher, data_dir, log_dir, max_steps, resume=False, extra=()):
    args = ["--data_dir", data_dir, "--log_dir", log_dir, "--batch_size", 2, "--lr", 1e-3, "--max_steps", max_steps]
    args += ["--log_interval", 5, "--save_interval", 10, "--ema_rate", "0.9999,0.9", "--num_workers", 1, *extra]
    if resume:
        args += ["--resume_checkpoint", "auto"]
    result = launch(launcher, args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def check_run(log_dir, data_dir, tiny, world_sizes):
    """Checks shared by every launcher: a 20-step run resumed to 30 steps with world sizes `world_sizes`."""
    log_dir = Path(log_dir)
    for step in (10, 20, 30):
        for name in (f"model{step:06d}.pt", f"ema_0.9999_{step:06d}.pt", f"ema_0.9_{step:06d}.pt", f"opt{step:06d}.pt", f"checkpoint{step:06d}.json"):
            assert (log_dir / name).exists(), name
    rows = read_progress(log_dir)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    global_batches = [2 * world_sizes[0]] * 4 + [2 * world_sizes[1]] * 2
    assert [int(r["samples"]) for r in rows] == list(np.cumsum([5 * b for b in global_batches]))
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "mse", "vb", "grad_norm"))
    log = (log_dir / "log.txt").read_text()
    assert f"resuming from {log_dir / 'model000020.pt'} at step 20" in log

    all_files = sorted(str(p) for p in Path(data_dir).rglob("*.png"))
    for world_size, segment in zip(world_sizes, log.split("training in ")[1:]):
        shards = re.findall(r"data shard rank=(\d+) images=(\d+) sha1=(\w+)", segment)
        assert len(shards) == world_size
        for rank, count, digest in shards:
            mine = all_files[int(rank) :: world_size]
            assert int(count) == len(mine)
            assert digest == hashlib.sha1("\n".join(mine).encode()).hexdigest()[:16]
        assert len({d for _, _, d in shards}) == world_size

    digests = re.findall(r"parameters identical on (\d) rank\(s\): sha1 (\w+)", log)
    assert [int(n) for n, _ in digests] == [world_sizes[0]] * 2 + [world_sizes[1]]
    model_state = torch.load(log_dir / "model000030.pt")
    assert digests[-1][1] == sha1_of_state(model_state)

    model, _ = create_model_and_diffusion(**{**model_and_diffusion_defaults(), **tiny})
    model.load_state_dict(model_state, strict=True)
    for rate in ("0.9999", "0.9"):
        ema = torch.load(log_dir / f"ema_{rate}_000030.pt")
        model.load_state_dict(ema, strict=True)
        assert any(not torch.equal(ema[k], model_state[k]) for k in model_state)
    manifest = json.loads((log_dir / "checkpoint000030.json").read_text())
    assert manifest["world_size"] == world_sizes[1] and manifest["step"] == 30


@pytest.mark.mpi
@pytest.mark.slow
def test_mpiexec_two_ranks_train_and_resume(image_folder_factory, tmp_path, tiny_model_flags):
    data = image_folder_factory(image_names())
    run_training("mpi", str(data), str(tmp_path / "run"), 20, extra=["--microbatch", 1])
    run_training("mpi", str(data), str(tmp_path / "run"), 30, resume=True)
    check_run(tmp_path / "run", data, tiny_model_flags, (2, 2))


@pytest.mark.mpi
@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume(image_folder_factory, tmp_path, tiny_model_flags):
    data = image_folder_factory(image_names())
    extra = ["--schedule_sampler", "loss-second-moment"]
    run_training("torchrun", str(data), str(tmp_path / "run"), 20, extra=extra)
    run_training("torchrun", str(data), str(tmp_path / "run"), 30, resume=True, extra=extra)
    check_run(tmp_path / "run", data, tiny_model_flags, (2, 2))


@pytest.mark.mpi
@pytest.mark.slow
def test_one_process_then_resume_on_two_ranks(image_folder_factory, tmp_path, tiny_model_flags):
    data = image_folder_factory(image_names())
    run_training("single", str(data), str(tmp_path / "run"), 20)
    run_training("mpi", str(data), str(tmp_path / "run"), 30, resume=True)
    check_run(tmp_path / "run", data, tiny_model_flags, (1, 2))


@pytest.mark.mpi
def test_a_corrupt_image_on_one_rank_stops_the_whole_job(image_folder_factory, tmp_path):
    data = image_folder_factory([f"cat_{i}.png" for i in range(4)])
    (data / "cat_3.png").write_bytes(b"not a png")
    result = launch("mpi", ["--data_dir", data, "--log_dir", tmp_path / "run", "--batch_size", 2, "--max_steps", 5, "--num_workers", 0], timeout=180)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("image_train.py: error:")]
    assert errors and all("cat_3.png" in line for line in errors)
