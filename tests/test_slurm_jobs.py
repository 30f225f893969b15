"""The SLURM jobs a plan writes, run under bash with fake srun/scontrol/sbatch on PATH and a 2-node allocation."""

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guided_diffusion import dist_util
from guided_diffusion.run.preemption import REQUEUE_EXIT_CODE
from pipeline import PlanError, expand, load_plan, reproduce, runner, slurm

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "plans" / "paper.toml"
JOB_ID = 4242
NODES = ("gpu-a07", "gpu-b12")

# Each fake appends one JSON line per call to $FAKE_LOG: its name, arguments and the variables a rank reads.
RECORDER = """
import json, os, sys
keys = ("MASTER_ADDR", "MASTER_PORT", "PYTHONPATH", "SLURM_ARRAY_TASK_ID")
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"name": os.path.basename(sys.argv[0]), "args": sys.argv[1:],
                        "env": {k: os.environ[k] for k in keys if k in os.environ}}) + "\\n")
"""

# srun also starts its tasks as a block distribution would, each with the variables SLURM gives a task.
FAKE_SRUN = """
import json, os, re, signal, sys, time
{recorder}
args = sys.argv[1:]
nodes = int(next(a for a in args if a.startswith("--nodes=")).split("=")[1])
per_node = int(next(a for a in args if a.startswith("--ntasks-per-node=")).split("=")[1])
with open(os.environ["FAKE_LOG"], "a") as f:
    for node in range(nodes):
        for local in range(per_node):
            env = dict(os.environ, SLURM_PROCID=str(node * per_node + local), SLURM_NTASKS=str(nodes * per_node),
                       SLURM_LOCALID=str(local), SLURM_NODEID=str(node))
            f.write(json.dumps({"name": "task", "env": {k: v for k, v in env.items()
                                                        if k.startswith(("SLURM_", "MASTER_"))}}) + "\\n")
behaviour = os.environ.get("FAKE_RANKS", "exit:0")
if behaviour.startswith("wait_usr1:"):
    # The ranks: run until USR1 arrives, then exit with the given code.
    code = int(behaviour.split(":")[1])
    signal.signal(signal.SIGUSR1, lambda *a: sys.exit(code))
    open(os.environ["FAKE_LOG"] + ".started", "w").close()
    while True:
        time.sleep(0.05)
sys.exit(int(behaviour.split(":")[1]))
"""

FAKE_SCONTROL = """
import os, sys
{recorder}
if sys.argv[1:3] == ["show", "hostnames"]:
    print("\\n".join(os.environ["FAKE_HOSTS"].split(",")))
"""

# In bash: the paper plan submits 242 jobs, and a Python start-up each would take seconds.
FAKE_SBATCH = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG.sbatch"
id=$(cat "$FAKE_LOG.ids" 2>/dev/null || echo 1000)
echo $((id + 1)) > "$FAKE_LOG.ids"
echo "$id"
"""


def write_fake(bin_dir, name, source):
    path = bin_dir / name
    path.write_text(source if source.startswith("#!") else f"#!{sys.executable}\n" + source.replace("{recorder}", RECORDER))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def cluster(tmp_path):
    """Fake SLURM commands on PATH; `run(script)` runs a job script as SLURM would on the first of two nodes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_fake(bin_dir, "srun", FAKE_SRUN)
    write_fake(bin_dir, "scontrol", FAKE_SCONTROL)
    write_fake(bin_dir, "sbatch", FAKE_SBATCH)
    log = tmp_path / "calls.jsonl"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_HOSTS": ",".join(NODES),
        "SLURM_JOB_ID": str(JOB_ID),
        "SLURM_JOB_NODELIST": "gpu-a07,gpu-b12",
        "SLURM_JOB_NUM_NODES": "2",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }

    class Cluster:
        def env(self, **extra):
            return {**env, **extra}

        def run(self, script, **extra):
            return subprocess.run(["bash", str(script)], env=self.env(**extra), capture_output=True, text=True, timeout=60)

        def start(self, script, **extra):
            return subprocess.Popen(["bash", str(script)], env=self.env(**extra), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

        def calls(self, name=None):
            if not log.exists():
                return []
            records = [json.loads(line) for line in log.read_text().splitlines()]
            return [r for r in records if name is None or r["name"] == name]

        def sbatch_calls(self):
            path = Path(str(log) + ".sbatch")
            return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

        def reset(self):
            log.unlink(missing_ok=True)

        started = Path(str(log) + ".started")

    return Cluster()


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def paper_jobs(tmp_path, nodes=2, gpus_per_node=4, ranks=None, python=None):
    """The paper plan's jobs for `nodes` x `gpus_per_node`, written by the dry run (or with a given interpreter)."""
    root = tmp_path / "work"
    tmp_path.mkdir(exist_ok=True)
    if python is None and ranks is None:
        out = io.StringIO()
        reproduce(str(PAPER), dry_run=True, root=str(root), launcher="slurm", nodes=nodes, gpus_per_node=gpus_per_node, stream=out)
        return root / "slurm", out.getvalue()
    plan = load_plan(str(PAPER), root=str(root))
    plan.launcher = "slurm"
    plan.slurm = {"nodes": nodes, "gpus_per_node": gpus_per_node, **({"ranks": ranks} if ranks else {})}
    stages = expand(plan)
    slurm.write_jobs(stages, set(runner.pending_stages(stages)), plan, str(root / "slurm"), str(tmp_path), python=python)
    return root / "slurm", ""


def fake_python(tmp_path, code=0):
    """An 'interpreter' that records its arguments and exits with `code` (a sampling task, say)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    return write_fake(bin_dir, f"python-fake-{code}", "{recorder}" + f"\nimport sys\nsys.exit({code})\n")


# ---- the text a SLURM user submits -------------------------------------------------------------


def test_paper_dry_run_writes_jobs_for_two_nodes_of_four_gpus(tmp_path):
    jobs, listing = paper_jobs(tmp_path)
    assert "278 stages" in listing and f"submit them with: bash {jobs / 'submit.sh'}" in listing
    scripts = sorted(jobs.glob("*.sbatch"))
    assert len(scripts) == 278
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script

    train = (jobs / "train_ffhq_debias.sbatch").read_text()
    header = [line for line in train.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=train_ffhq_debias",
        f"#SBATCH --output={jobs / 'train_ffhq_debias'}.%j.log",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
    ]
    python = os.path.abspath(sys.executable)
    assert f"srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 {python} -m torch.distributed.run --nnodes 2 --nproc_per_node 4" in train
    assert '--rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:$rendezvous_port"' in train
    assert f"export PYTHONPATH={REPO}" in train and " python " not in train
    # The paper's global batch of 8 over 2 x 4 ranks.
    assert "--resume_checkpoint auto" in train and "--batch_size 1 &" in train
    assert "--keep_checkpoints 2 --keep_every 100000" in train

    sample = (jobs / "sample_ffhq_debias_500000_ddpm100.sbatch").read_text()
    assert "#SBATCH --array=0-7" in sample and "#SBATCH --gpus-per-node=1" in sample
    assert f"#SBATCH --output={jobs / 'sample_ffhq_debias_500000_ddpm100'}.%A_%a.log" in sample
    assert '--shard "$SLURM_ARRAY_TASK_ID" --num_shards 8 &' in sample and "srun" not in sample

    evaluate = (jobs / "evaluate_ffhq_debias_500000_ddpm100.sbatch").read_text()
    assert "#SBATCH --gpus-per-node=1" in evaluate and "--requeue" not in evaluate and "trap" not in evaluate


def test_submit_chains_every_job_after_the_ones_it_needs(tmp_path, cluster):
    jobs, _ = paper_jobs(tmp_path)
    result = cluster.run(jobs / "submit.sh")
    assert result.returncode == 0, result.stderr
    calls = cluster.sbatch_calls()
    assert len(calls) == 278
    ids = {}
    for number, args in enumerate(calls):
        script = args[-1]
        assert (jobs / script).exists() and args[0] == "--parsable"
        dependency = [a for a in args if a.startswith("--dependency=afterok:")]
        needed = dependency[0].split(":")[1:] if dependency else []
        assert all(int(n) in ids.values() for n in needed), args  # only jobs submitted before
        ids[script] = 1000 + number
    train_id = ids["train_ffhq_debias_500000.sbatch"]
    sample = next(args for args in calls if args[-1] == "sample_ffhq_debias_500000_ddpm100.sbatch")
    assert f"--dependency=afterok:{train_id}" in sample
    last_segment = next(args for args in calls if args[-1] == "train_ffhq_debias.sbatch")
    assert f"--dependency=afterok:{ids['train_ffhq_debias_900000.sbatch']}" in last_segment


def test_reproduce_submits_through_sbatch(tmp_path, cluster, monkeypatch):
    monkeypatch.setenv("PATH", cluster.env()["PATH"])
    monkeypatch.setenv("FAKE_LOG", cluster.env()["FAKE_LOG"])
    out = io.StringIO()
    counts = reproduce(str(PAPER), root=str(tmp_path / "work"), launcher="slurm", nodes=1, gpus_per_node=8, stream=out, only=["train/cifar10"])
    assert counts == {"written": 4}
    assert [args[-1] for args in cluster.sbatch_calls()] == [f"train_cifar10_{w}.sbatch" for w in ("constant", "p2", "min_snr", "debias")]
    assert "train/cifar10/debias: job 1003" in out.getvalue()


@pytest.mark.parametrize("nodes, gpus", [(3, 1), (1, 3), (4, 4)])
def test_a_layout_that_cannot_keep_the_global_batch_is_refused(tmp_path, nodes, gpus):
    with pytest.raises(ValueError, match=rf"{nodes * gpus} rank\(s\) cannot keep the global batch of 8"):
        paper_jobs(tmp_path, nodes=nodes, gpus_per_node=gpus)
    assert not (tmp_path / "work" / "slurm").exists()


def test_layout_options_need_the_slurm_launcher(tmp_path):
    with pytest.raises(PlanError, match="add --launcher slurm"):
        reproduce(str(PAPER), dry_run=True, root=str(tmp_path), nodes=2, stream=io.StringIO())


# ---- the jobs, run ------------------------------------------------------------------------------


def test_torchrun_job_rendezvous_on_the_first_node(tmp_path, cluster):
    jobs, _ = paper_jobs(tmp_path)
    result = cluster.run(jobs / "train_ffhq_debias.sbatch")
    assert result.returncode == 0, result.stderr
    (srun,) = cluster.calls("srun")
    args = srun["args"]
    assert args[:4] == ["--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", os.path.abspath(sys.executable)]
    port = 20000 + JOB_ID % 20000
    assert args[args.index("--rdzv_endpoint") + 1] == f"{NODES[0]}:{port}"
    assert args[args.index("--rdzv_id") + 1] == str(JOB_ID) and args[args.index("--rdzv_backend") + 1] == "c10d"
    assert args[args.index("--nnodes") + 1] == "2" and args[args.index("--nproc_per_node") + 1] == "4"
    assert srun["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    # One torchrun agent per node; it starts the node's 4 workers.
    assert sorted(t["env"]["SLURM_NODEID"] for t in cluster.calls("task")) == ["0", "1"]
    assert not cluster.calls("scontrol") or all(c["args"][0] == "show" for c in cluster.calls("scontrol"))


def test_srun_job_maps_slurm_tasks_to_ranks_and_gpus(tmp_path, cluster):
    jobs, _ = paper_jobs(tmp_path, ranks="srun", python=os.path.abspath(sys.executable))
    result = cluster.run(jobs / "train_ffhq_debias.sbatch")
    assert result.returncode == 0, result.stderr
    text = (jobs / "train_ffhq_debias.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=4" in text
    (srun,) = cluster.calls("srun")
    assert srun["args"][:3] == ["--nodes=2", "--ntasks-per-node=4", "--kill-on-bad-exit=1"]
    tasks = [t["env"] for t in cluster.calls("task")]
    assert len(tasks) == 8
    mapping = []
    for env in tasks:
        assert dist_util.detect_launcher(env) == "slurm"
        mapping.append(dist_util.slurm_ranks(env))
    port = 20000 + JOB_ID % 20000
    assert mapping == [(node * 4 + local, 8, local, f"tcp://{NODES[0]}:{port}") for node in range(2) for local in range(4)]


def test_mpiexec_job_runs_one_rank_per_gpu_across_the_allocation(tmp_path):
    jobs, _ = paper_jobs(tmp_path, ranks="mpiexec", python="/venv/bin/python")
    text = (jobs / "train_ffhq_debias.sbatch").read_text()
    assert re.search(r"\n\S*mpiexec -n 8 -ppn 4 /venv/bin/python -m scripts\.image_train .* --batch_size 1 &\n", text)
    assert "#SBATCH --ntasks-per-node=4" in text and "srun" not in text and "rendezvous" not in text


@pytest.mark.parametrize("code, requeued, status", [(0, False, 0), (REQUEUE_EXIT_CODE, True, 0), (1, False, 1)])
def test_exit_75_of_the_ranks_requeues_the_job(tmp_path, cluster, code, requeued, status):
    jobs, _ = paper_jobs(tmp_path)
    result = cluster.run(jobs / "train_ffhq_debias.sbatch", FAKE_RANKS=f"exit:{code}")
    assert result.returncode == status
    requeues = [c["args"] for c in cluster.calls("scontrol") if c["args"][0] == "requeue"]
    assert requeues == ([["requeue", str(JOB_ID)]] if requeued else [])


@pytest.mark.parametrize("ranks, code", [("srun", REQUEUE_EXIT_CODE), ("torchrun", 1)])
def test_usr1_to_the_job_reaches_the_ranks_and_requeues(tmp_path, cluster, ranks, code):
    # torchrun turns its workers' 75 into 1; the job knows it handed the signal on.
    jobs, _ = paper_jobs(tmp_path, ranks=ranks, python=os.path.abspath(sys.executable))
    job = cluster.start(jobs / "train_ffhq_debias.sbatch", FAKE_RANKS=f"wait_usr1:{code}")
    try:
        deadline = time.time() + 30
        while not cluster.started.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert cluster.started.exists(), job.stderr.read() if job.poll() is not None else "srun never started"
        job.send_signal(signal.SIGUSR1)
        assert job.wait(timeout=30) == 0
    finally:
        if job.poll() is None:
            job.kill()
    assert [c["args"] for c in cluster.calls("scontrol") if c["args"][0] == "requeue"] == [["requeue", str(JOB_ID)]]
    assert "requeueing job 4242" in job.stdout.read()


def test_sample_array_task_samples_its_shard(tmp_path, cluster):
    jobs, _ = paper_jobs(tmp_path, python=str(fake_python(tmp_path)))
    result = cluster.run(jobs / "sample_celebahq_p2_500000_ddpm250.sbatch", SLURM_ARRAY_TASK_ID="5")
    assert result.returncode == 0, result.stderr
    (call,) = cluster.calls("python-fake-0")
    args = call["args"]
    assert args[:2] == ["-m", "scripts.image_sample"] and args[-4:] == ["--shard", "5", "--num_shards", "8"]
    assert args[args.index("--timestep_respacing") + 1] == "250"

    cluster.reset()
    stopped = fake_python(tmp_path, code=REQUEUE_EXIT_CODE)
    jobs, _ = paper_jobs(tmp_path / "again", python=str(stopped))
    assert cluster.run(jobs / "sample_celebahq_p2_500000_ddpm250.sbatch", SLURM_ARRAY_TASK_ID="2").returncode == 0
    assert [c["args"] for c in cluster.calls("scontrol")] == [["requeue", str(JOB_ID)]]
