"""Multi-rank launches without a GPU: where rank 0 listens, which launcher a rank sees, the process-group
timeout, and two-rank mpiexec jobs whose rank 0 cannot resolve its own name or fails before the rendezvous.

The process tests run in a UTS namespace (`unshare -u`, as root) whose hostname resolves nowhere, as on
many containers and cloud GPU machines; they are skipped where that cannot be made.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guided_diffusion import dist_util, sampling
from guided_diffusion.dist_util import RendezvousError, rendezvous_host
from guided_diffusion.train_util import training_defaults
from scripts import image_sample, image_train
from tests.test_training import image_names
from tests.tiny import TINY_MODEL_FLAGS, flag_list

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UNRESOLVABLE = "nosuchhost-debias-xyz"


def no_such_name(name):
    raise OSError(-2, "Name or service not known")


# ---- where rank 0 listens -------------------------------------------------------------------


def test_an_unresolvable_hostname_on_one_node_listens_on_loopback():
    assert rendezvous_host({}, single_node=True, resolve=no_such_name, hostname=lambda: UNRESOLVABLE) == "127.0.0.1"


def test_across_nodes_an_unresolvable_or_loopback_name_gives_the_outgoing_interface():
    outgoing = lambda: "10.1.2.3"  # noqa: E731
    assert rendezvous_host({}, False, resolve=no_such_name, hostname=lambda: UNRESOLVABLE, outgoing=outgoing) == "10.1.2.3"
    # Debian's /etc/hosts: the hostname is 127.0.1.1, which no other node reaches.
    debian = {"gpu-node-7": "127.0.1.1"}.__getitem__
    assert rendezvous_host({}, False, resolve=debian, hostname=lambda: "gpu-node-7", outgoing=outgoing) == "10.1.2.3"
    routable = {"gpu-node-7": "10.9.9.9"}.__getitem__
    assert rendezvous_host({}, False, resolve=routable, hostname=lambda: "gpu-node-7", outgoing=outgoing) == "10.9.9.9"


def test_no_reachable_address_is_one_error_naming_the_hostname_and_master_addr():
    def no_route():
        raise OSError(101, "Network is unreachable")

    with pytest.raises(RendezvousError, match=f"hostname '{UNRESOLVABLE}' gives no address .* set MASTER_ADDR"):
        rendezvous_host({}, False, resolve=no_such_name, hostname=lambda: UNRESOLVABLE, outgoing=no_route)
    with pytest.raises(RendezvousError, match="MASTER_ADDR='nosuch.invalid' does not resolve on rank 0"):
        rendezvous_host({"MASTER_ADDR": "nosuch.invalid"}, True, resolve=no_such_name)
    assert rendezvous_host({"MASTER_ADDR": "n1"}, True, resolve={"n1": "10.0.0.1"}.__getitem__) == "10.0.0.1"


# ---- which launcher -------------------------------------------------------------------------


SRUN = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    "environ, kind",
    [
        # srun --mpi=pmix exports PMIx's rank beside SLURM's: the ranks are srun's.
        (dict(SRUN, PMIX_RANK="3", PMIX_NAMESPACE="slurm.pmix.1.0"), "slurm"),
        # Open MPI's mpirun inside an allocation sets its own rank (and PMIx's): MPI's.
        (dict(SRUN, PMIX_RANK="3", OMPI_COMM_WORLD_RANK="3"), "mpi"),
        # mpich's mpiexec (Hydra) inside an allocation.
        (dict(SRUN, PMI_RANK="3"), "mpi"),
        ({"PMIX_RANK": "1"}, "mpi"),
    ],
)
def test_srun_with_pmix_takes_the_slurm_path(environ, kind):
    assert dist_util.detect_launcher(environ) == kind


# ---- the process-group timeout --------------------------------------------------------------


def test_the_timeout_flag_default_outlasts_a_ddpm_1000_batch_behind_the_others():
    assert training_defaults()["dist_timeout"] == sampling.sampling_defaults()["dist_timeout"] == 120
    # One DDPM-1000 batch of 64 256x256 images, float32 on a V100 (~2 s per forward), with a margin of 3;
    # NCCL's own default is 10 minutes.
    assert dist_util.DIST_TIMEOUT_MINUTES * 60 >= 3 * 1000 * 2.0 > 10 * 60


@pytest.mark.parametrize("script", [image_train, image_sample])
def test_the_scripts_pass_dist_timeout_to_the_process_group(script, tmp_path, monkeypatch, capsys):
    dist_util.cleanup()
    seen = {}

    def refuse(**kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(dist_util.dist, "init_process_group", refuse)
    args = ["--data_dir", str(tmp_path)] if script is image_train else ["--model_path", str(tmp_path / "m.pt")]
    assert script.main(args + ["--dist_timeout", "7"]) == 1
    assert seen["timeout"].total_seconds() == 7 * 60
    assert capsys.readouterr().err.strip().endswith("error: stop here")
    assert script.main(args + ["--dist_timeout", "0"]) == 1
    assert "--dist_timeout must be a positive number of minutes, got 0" in capsys.readouterr().err


# ---- two ranks under mpiexec in a namespace whose hostname resolves nowhere -------------------


def can_unshare():
    if os.geteuid() != 0 or shutil.which("unshare") is None or not (BIN / "mpiexec").exists():
        return False
    return subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode == 0


needs_namespace = pytest.mark.skipif(not can_unshare(), reason="needs root, unshare and the venv's mpiexec")


def mpiexec_in_namespace(args, timeout, **environ):
    command = [str(BIN / "mpiexec"), "-n", "2", sys.executable, str(REPO / "scripts" / "image_train.py")]
    command += flag_list(TINY_MODEL_FLAGS) + [str(a) for a in args]
    shell = f"hostname {UNRESOLVABLE} && exec \"$@\""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **environ)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID"):
        env.pop(var, None)
    if "MASTER_ADDR" not in environ:
        env.pop("MASTER_ADDR", None)
    start = time.monotonic()
    result = subprocess.run(["unshare", "-u", "sh", "-c", shell, "sh"] + command, cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - start


@pytest.mark.mpi
@needs_namespace
def test_two_ranks_train_when_the_hostname_does_not_resolve(image_folder_factory, tmp_path):
    data = image_folder_factory(image_names()[:8])
    result, _ = mpiexec_in_namespace(["--data_dir", data, "--log_dir", tmp_path / "run", "--batch_size", 2,
                                      "--max_steps", 2, "--save_interval", 2, "--num_workers", 0], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model000002.pt").exists()
    assert "parameters identical on 2 rank(s)" in (tmp_path / "run" / "log.txt").read_text()


@pytest.mark.mpi
@needs_namespace
def test_rank_0_failing_before_the_rendezvous_ends_the_job_in_seconds_with_one_line(image_folder_factory, tmp_path):
    data = image_folder_factory(image_names()[:4])
    result, seconds = mpiexec_in_namespace(["--data_dir", data, "--log_dir", tmp_path / "run", "--max_steps", 1],
                                           timeout=120, MASTER_ADDR="nosuch.invalid")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["image_train.py: error: MASTER_ADDR='nosuch.invalid' does not resolve on rank 0 "
                      "([Errno -2] Name or service not known)"], result.stderr[-2000:]
    # Mostly the two ranks importing torch (4 s on an idle machine); a hang would last the --dist_timeout (120 min).
    assert seconds < 60
