"""Process-group setup for one process, `mpiexec -n N`, `torchrun --nproc_per_node N` or `srun`.

API (every helper also works before `setup_dist()` or after `cleanup()`, as one process):

- `setup_dist(backend=None, device="", timeout_minutes=DIST_TIMEOUT_MINUTES)`: join the job's process
  group; idempotent. `timeout_minutes` (--dist_timeout) bounds every collective and barrier. The
  launcher is detected from the environment:
    * torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
    * srun launching the ranks itself: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with
      MASTER_ADDR and MASTER_PORT (the job's first node) naming where rank 0 listens. Checked
      before MPI's variables: srun's PMIx plugin exports PMIX_RANK too;
    * MPI (mpich/Intel MPI: PMI_RANK/PMI_SIZE; Open MPI: OMPI_COMM_WORLD_RANK/SIZE; PMIx:
      PMIX_RANK; MVAPICH: MV2_COMM_WORLD_RANK): mpi4py is imported only then; rank 0
      broadcasts its address and a free port (`rendezvous_host`: MASTER_ADDR if set, checked to
      resolve; 127.0.0.1 when every rank shares its node; else its hostname's address, or the
      address of its outgoing interface where the name does not resolve or resolves to loopback),
      or the reason it has none, which every rank then raises; the local rank comes from the ranks
      sharing this node;
    * otherwise a single process, which still gets a one-member group on a free local
      port so that collective code paths (DDP, all_reduce) run unchanged.
  The backend is NCCL when CUDA is available (one GPU per local rank, selected with
  `torch.cuda.set_device`) and gloo otherwise. `device` is --device: "cuda" requires a
  GPU, "cpu" never uses one, "" uses one when available; a rank that must have a GPU
  (asked for, or allocated by SLURM) and sees none raises `device_health.DeviceError`,
  one line naming its host, before it joins the group. Under torchrun, MPI and srun a
  rank also ends itself when its launcher dies (`exit_when_parent_dies`).
- `device_report()`: this rank's start-up line (host, device name and memory, backend).
- `dev()`: this rank's device (its GPU, or the CPU).
- `resolve_device(name, flag)`: the torch device a `--device` value names, checked to exist here.
- `get_rank()`, `get_world_size()`, `get_local_rank()`, `is_main()` (rank 0),
  `launcher()` ("torchrun", "mpi", "slurm" or "single").
- `barrier()`: wait for every rank.
- `sync_params(params)`: overwrite every rank's tensors with rank 0's.
- `broadcast_object(obj)`: rank 0's picklable `obj` on every rank.
- `all_gather_object(obj)`: the list of every rank's `obj`, in rank order.
- `load_state_dict(path, map_location=None)`: rank 0 reads `path` (local or gs://, az://
  through blobfile) and broadcasts the bytes; every rank returns `torch.load` of them.
  Must be called by every rank; an unreadable file is a one-line CheckpointError naming it.
- `cleanup()`: leave the process group.
- `abort(exit_code)`: for scripts whose rank hit an error while other ranks may wait in a
  collective: under MPI, MPI_Abort stops every rank; otherwise this process exits at once
  (skipping interpreter shutdown, which could wait on the group) and torchrun stops the rest.
"""

import datetime
import os
import socket
import sys
import threading
import time

import blobfile as bf
import torch
import torch.distributed as dist

from .run import device_health
from .run.checkpoint import CheckpointError, load_state_bytes

# Broadcast large files in pieces: a single multi-GB message overflows some transports.
_BROADCAST_CHUNK_BYTES = 1 << 28

_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT")
# Set by mpiexec's own launchers, never by srun: mpiexec inside a SLURM allocation leaves the batch step's
# SLURM_PROCID (and MASTER_ADDR from the job script) in every rank, srun --mpi=pmix exports PMIX_RANK.
_MPIEXEC_ONLY_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

# --dist_timeout's default, minutes. The longest a rank waits idle in a collective is a sampling rank
# that has finished while another draws its last batch (one batch is the imbalance the sample store
# allows), or the checkpoint barrier behind it: one DDPM-1000 batch of 64 256x256 images in float32 on
# a V100 is about 1000 x 2 s = 35 min; NCCL's own 10 min would end a 50K-sample run there. 120 min
# leaves a margin of three, and still ends a truly hung job the same morning.
DIST_TIMEOUT_MINUTES = 120

# How often a rank checks that its launcher is still there.
LAUNCHER_POLL_SECONDS = 1.0
# How long a failing rank under MPI lets its last output travel before MPI_Abort.
ABORT_GRACE_SECONDS = 0.5

_state = {"launcher": None, "local_rank": 0, "cuda": None, "report": None}


def launcher():
    """How this job was started: "torchrun", "mpi", "slurm" or "single" (None before `setup_dist`)."""
    return _state["launcher"]


def launch_flag_defaults():
    """The flag the training and sampling scripts share for their process group."""
    return dict(dist_timeout=DIST_TIMEOUT_MINUTES)


def detect_launcher(environ=None):
    environ = os.environ if environ is None else environ
    if all(k in environ for k in _TORCHRUN_VARS):
        return "torchrun"
    if all(k in environ for k in _SLURM_VARS) and not any(k in environ for k in _MPIEXEC_ONLY_VARS):
        return "slurm"
    if any(k in environ for k in _MPI_RANK_VARS):
        return "mpi"
    return "single"


def slurm_ranks(environ):
    """rank, world size, local rank and the init URL of a rank that srun started directly."""
    rank, world_size = int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"])
    local_rank = int(environ["SLURM_LOCALID"])
    return rank, world_size, local_rank, f"tcp://{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s.getsockname()[1]


class RendezvousError(OSError):
    """The ranks cannot agree where rank 0 listens; raised on every rank, with rank 0's reason."""


class PeerFailed(RuntimeError):
    """Another rank (rank 0) failed and says so itself: this rank ends the job without a line of its own."""


def _outgoing_address():
    # A UDP connect sends nothing: it only asks the kernel which interface would route off this host.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1 (RFC 5737): routable in form, never answered
        return s.getsockname()[0]


def rendezvous_host(environ, single_node, resolve=socket.gethostbyname, hostname=socket.getfqdn,
                    outgoing=_outgoing_address):
    """Where rank 0 listens: an IPv4 address every rank can reach (see the module docstring); RendezvousError if none."""
    given = environ.get("MASTER_ADDR")
    if given:
        try:
            return resolve(given)
        except OSError as error:
            raise RendezvousError(f"MASTER_ADDR={given!r} does not resolve on rank 0 ({error})") from None
    if single_node:
        return "127.0.0.1"
    name = hostname()
    try:
        address = resolve(name)
    except OSError:
        address = None
    if address is None or address.startswith("127."):
        # Debian-style /etc/hosts maps the hostname to 127.0.1.1, which other nodes cannot reach.
        try:
            address = outgoing()
        except OSError as error:
            raise RendezvousError(
                f"rank 0's hostname {name!r} gives no address other nodes can reach ({address or 'it does not resolve'}) "
                f"and no outgoing interface was found ({error}); set MASTER_ADDR to rank 0's address") from None
    return address


def _mpi_rendezvous():
    """rank, world size, local rank and the init URL, agreed over MPI; every rank raises if rank 0 has none."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, single_node = node.Get_rank(), node.Get_size() == world_size
    if rank == 0:
        # Rank 0 always reaches the broadcast: a rank waiting there for an address that never comes would hang.
        try:
            message = ("ok", (rendezvous_host(os.environ, single_node), _free_port()))
        except Exception as error:  # noqa: BLE001  (whatever it is, the other ranks must hear of it)
            message = ("error", f"{type(error).__name__}: {error}" if not isinstance(error, RendezvousError) else str(error))
    else:
        message = None
    kind, payload = comm.bcast(message, root=0)
    if kind == "error":
        raise RendezvousError(payload) if rank == 0 else PeerFailed(f"rank 0 failed the rendezvous: {payload}")
    host, port = payload
    return rank, world_size, local_rank, f"tcp://{host}:{port}"


def setup_dist(backend=None, device="", timeout_minutes=DIST_TIMEOUT_MINUTES):
    """Join the process group of however this job was launched (see the module docstring)."""
    if dist.is_initialized():
        return
    if not timeout_minutes > 0:
        raise ValueError(f"--dist_timeout must be a positive number of minutes, got {timeout_minutes}")
    kind = detect_launcher()
    # Known before the rendezvous, so that a failure during it ends every rank (`abort`), not only this one.
    _state.update(launcher=kind)
    if kind == "torchrun":
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        init_method = "env://"
    elif kind == "mpi":
        rank, world_size, local_rank, init_method = _mpi_rendezvous()
    elif kind == "slurm":
        rank, world_size, local_rank, init_method = slurm_ranks(os.environ)
    else:
        rank, world_size, local_rank = 0, 1, 0
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    cuda = device_health.use_cuda(device, rank, os.environ)
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    _state.update(local_rank=local_rank, cuda=cuda)
    _state["report"] = device_health.describe(rank, world_size, local_rank, dev(), backend, kind)
    if kind != "single":
        # A plain process may outlive its shell on purpose (nohup); a rank has no use without its launcher.
        launcher_pid = os.getppid()
        exit_when_parent_dies(launcher_pid, f"rank {rank}: its launcher ({kind}, pid {launcher_pid}) is gone; exiting")


def _cuda():
    return torch.cuda.is_available() if _state["cuda"] is None else _state["cuda"]


def exit_when_parent_dies(parent_pid, message=None, poll_seconds=LAUNCHER_POLL_SECONDS):
    """End this process (exit status 1, after printing `message`) once `parent_pid` is no longer its parent.

    A launcher killed without passing the kill on (torchrun's agent after kill -9)
    would leave its ranks training and writing checkpoints for nobody. A daemon
    thread polls the parent pid rather than asking for prctl(PR_SET_PDEATHSIG):
    that signal fires when the *thread* that forked the child ends, is Linux-only,
    and would arrive as a signal that preemption handlers may claim.
    """

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        if message:
            print(message, file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="exit-when-parent-dies", daemon=True).start()


def dev():
    if _cuda():
        return torch.device("cuda", _state["local_rank"] % torch.cuda.device_count())
    return torch.device("cpu")


def device_report():
    """This rank's start-up line (see `device_health.describe`); a plain description before `setup_dist`."""
    return _state["report"] or device_health.describe(0, 1, 0, dev(), "none", "single")


def resolve_device(name=None, flag="--device"):
    """The torch.device of a `--device` value (None: cuda when available, else cpu); ValueError if it is not here."""
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name!r}: not a device name (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA GPU is available on this machine; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def get_local_rank():
    return _state["local_rank"]


def is_main():
    return get_rank() == 0


def barrier():
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _comm_device():
    """Where collective tensors must live for the group's backend."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return dev()
    return torch.device("cpu")


def sync_params(params):
    """Copy rank 0's values into every rank's tensors (in place)."""
    if get_world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data if isinstance(p, torch.nn.Parameter) else p, src=0)


def broadcast_object(obj):
    if get_world_size() == 1:
        return obj
    holder = [obj if is_main() else None]
    dist.broadcast_object_list(holder, src=0, device=_comm_device())
    return holder[0]


def all_gather_object(obj):
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_bytes(data):
    """Rank 0's `data` (bytes) on every rank; other ranks pass None."""
    if get_world_size() == 1:
        return data
    device = _comm_device()
    length = torch.tensor([len(data) if is_main() else 0], dtype=torch.long, device=device)
    dist.broadcast(length, src=0)
    total = int(length.item())
    buffer = bytearray(data) if is_main() else bytearray(total)
    for start in range(0, total, _BROADCAST_CHUNK_BYTES):
        stop = min(start + _BROADCAST_CHUNK_BYTES, total)
        if is_main():
            chunk = torch.frombuffer(buffer, dtype=torch.uint8, offset=start, count=stop - start).to(device)
        else:
            chunk = torch.empty(stop - start, dtype=torch.uint8, device=device)
        dist.broadcast(chunk, src=0)
        if not is_main():
            buffer[start:stop] = chunk.cpu().numpy().tobytes()
    return bytes(buffer)


def load_state_dict(path, map_location=None, weights_only=True):
    """`torch.load` of a local or blobfile path, read once by rank 0 and shared; call on every rank."""
    data = None
    error = None
    if is_main():
        try:
            with bf.BlobFile(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            error = ("missing", f"{path}: no such file")
        except OSError as e:
            error = ("unreadable", f"checkpoint {path}: cannot read it ({e.strerror or e})")
    error = broadcast_object(error)
    if error is not None:
        raise (FileNotFoundError if error[0] == "missing" else CheckpointError)(error[1])
    data = broadcast_bytes(data)
    return load_state_bytes(data, path, map_location=map_location, weights_only=weights_only)


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
    _state.update(launcher=None, local_rank=0, cuda=None, report=None)


def in_job_of_several_ranks():
    """True in a launched job of more than one rank, from the moment `setup_dist` starts joining it."""
    return get_world_size() > 1 or _state["launcher"] not in (None, "single")


def abort(exit_code=1, quiet=False):
    """End the whole job from this rank (see the module docstring); never returns.

    `quiet`: another rank has said why and ends the job itself; this one waits a moment for that
    first (so that its line, not this rank's kill, is what the user sees), then ends the job anyway.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if _state["launcher"] == "mpi":
        from mpi4py import MPI

        # mpiexec relays a rank's output through its proxy, which MPI_Abort may kill
        # before the error line just printed got through.
        time.sleep(ABORT_GRACE_SECONDS * (6 if quiet else 1))
        MPI.COMM_WORLD.Abort(exit_code)
    os._exit(exit_code)
