"""A host-sync budget: how often one training step and one sampling step make the host wait for the device.

Counted with tests.host_syncs.HostReads (a TorchFunctionMode) on the CPU: the calls that read a tensor
back or copy it with blocking (item, bool, float, cpu, numpy, tolist, a blocking .to), which on CUDA
each wait for the GPU's queue to drain. AdamW's `step` counters are left out: torch keeps them on the
CPU (test_fake_cuda checks they stay there after a resume).

Budget outside logging steps: 1 per training step (the decision whether every rank's loss and
gradient are finite and whether any rank was asked to stop: one collective, one read), 0 per
sampling step of every sampler (the schedule arrays reach the device once per process, counted
apart). Measured on the code before this budget (issue 30): 35 per training step, and 163 after a
resume (AdamW read its 2 x 64 `step` counters back from the device); DDPM 9 and DDIM 13 per sampling
step. A logging step adds one read for all the steps since the last one (DeferredLog).
"""

import numpy as np
import pytest
import torch

from guided_diffusion import dist_util, logger, noise, samplers, sampling
from guided_diffusion.run import host_sync
from guided_diffusion.script_util import create_model_and_diffusion
from guided_diffusion.train_util import TrainLoop
from tests.host_syncs import HostReads
from tests.tiny import tiny_flags

TRAINING_STEP_BUDGET = 1
SAMPLING_STEP_BUDGET = 0


def batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1, {}


def tiny_loop(tmp_path, **kwargs):
    torch.manual_seed(0)
    logger.configure(str(tmp_path))
    model, diffusion = create_model_and_diffusion(**tiny_flags())
    return TrainLoop(model=model, diffusion=diffusion, data=batches(), batch_size=2, lr=1e-3, log_interval=1000,
                     save_interval=1000, log_dir=str(tmp_path), **kwargs)


def adamw_step_counters(loop):
    return [state["step"] for state in loop.opt.state.values()]


def test_a_training_step_reads_the_device_once(tmp_path):
    loop = tiny_loop(tmp_path)
    data = batches(1)
    loop.run_step(*next(data))
    for _ in range(2):
        with HostReads(exclude=adamw_step_counters(loop)) as reads:
            assert loop.run_step(*next(data))
        assert reads.total <= TRAINING_STEP_BUDGET, reads.by_place


def test_a_logging_step_reads_all_deferred_values_at_once(tmp_path):
    loop = tiny_loop(tmp_path)
    data = batches(2)
    for _ in range(3):
        loop.run_step(*next(data))
    assert len(loop.deferred_log.pending) == 3
    calls = []
    # The log calls themselves get CPU tensors (no device reads there); only the copy that brings them counts.
    loop.deferred_log.pending = [(lambda *args: calls.append(args), args) for _, args in loop.deferred_log.pending]
    with HostReads() as reads:
        loop.deferred_log.flush()
    assert reads.total == 1 and reads.by_name["cpu"] == 1 and len(calls) == 3
    assert all(t.device.type == "cpu" for args in calls for t in args[1:4] if isinstance(t, torch.Tensor))
    assert loop.deferred_log.pending == []


def test_deferred_log_calls_get_the_values_and_dtypes_an_immediate_call_would():
    seen = []
    deferred = host_sync.DeferredLog()
    t = torch.tensor([3, 7, 999])
    terms = {"loss": torch.tensor([0.1, 0.2, 0.3]), "mse": torch.tensor([1e-8, 2.0, 3.5])}
    deferred.add(lambda *args: seen.append(args), t, None, torch.tensor(2.5), terms, "not a tensor")
    deferred.flush()
    (got_t, got_none, got_square, got_terms, got_text), = seen
    assert torch.equal(got_t, t) and got_t.dtype == torch.int64 and got_none is None and got_text == "not a tensor"
    assert float(got_square) == 2.5 and all(torch.equal(got_terms[k], v) and got_terms[k].dtype == v.dtype
                                            for k, v in terms.items())


def test_the_logged_gradient_norm_is_the_one_the_trainer_computes(tmp_path):
    loop = tiny_loop(tmp_path)
    loop.forward_backward(*next(batches(3)))
    expected = loop.mp_trainer.grad_norm()
    assert host_sync.norm_from_square_sum(loop.mp_trainer.grad_square_sum()) == expected


def test_agree_is_one_read_for_finiteness_and_the_stop_request():
    with HostReads() as reads:
        assert host_sync.agree(torch.tensor(True), False) == (True, False)
    assert reads.total == 1
    assert host_sync.agree(torch.tensor(False), True) == (False, True)


def test_resuming_loads_the_optimizer_state_on_the_cpu(tmp_path, monkeypatch):
    """AdamW keeps `step` where the loaded state has it: loading onto the GPU (ADM's map_location) makes it read
    each counter back every step. Here `dev()` claims a GPU while the optimizer file is read: loading onto it
    fails on this machine, as it would put the counters on the GPU on a real one."""
    loop = tiny_loop(tmp_path / "first", max_steps=1)
    loop.run_loop()
    seen = []
    load = dist_util.load_state_dict

    def spy(path, map_location=None, **kwargs):
        seen.append((path, str(map_location)))
        return load(path, map_location=map_location, **kwargs)

    monkeypatch.setattr(dist_util, "load_state_dict", spy)
    monkeypatch.setattr(dist_util, "dev", lambda: torch.device("cuda"))
    resumed = tiny_loop(tmp_path / "first", resume_checkpoint="auto", max_steps=2)
    monkeypatch.undo()
    assert resumed.step == 1
    (opt_path, opt_location), = [(p, m) for p, m in seen if "opt" in str(p).rsplit("/", 1)[-1]]
    assert opt_location == "cpu"
    assert all(counter.device.type == "cpu" for counter in adamw_step_counters(resumed))


def sampler_flags(name, steps):
    flags = dict(sampling.sampling_defaults(), **tiny_flags(), sampler=name)
    flags.update(samplers.steps_flags(name, steps))
    return flags


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_a_sampling_step_never_reads_the_device(name):
    sampler = samplers.get_sampler(name)
    counts = []
    for steps in (3, 6):
        flags = sampler_flags(name, steps)
        torch.manual_seed(0)
        respacing = flags["timestep_respacing"] if sampler.respaced else ""
        model, diffusion = create_model_and_diffusion(**dict(tiny_flags(), timestep_respacing=respacing))
        source = noise.noise_source(0, range(2), "cpu", torch.device("cpu"))
        with HostReads() as reads, torch.no_grad():
            images = sampler.run(model.eval(), diffusion, (2, 3, 16, 16), model_kwargs={}, noise_source=source,
                                 device=torch.device("cpu"), flags=flags)
        assert np.isfinite(images.numpy()).all()
        counts.append(reads.total)
    per_step = (counts[1] - counts[0]) / 3
    assert per_step <= SAMPLING_STEP_BUDGET, (name, counts)
