"""ADM's own training step and sampling loops, timed as gpu_benchmark.py times ours; run by adm_baseline.py.

    PYTHONPATH=third_party/guided-diffusion python scripts/benchmarks/adm_worker.py '<json settings>'

It runs in its own process with openai/guided-diffusion's package first on the path (that
package is also called `guided_diffusion`), calls only ADM's public functions (its
TrainLoop.run_step, create_model_and_diffusion, sampling loops) and prints one
`measure.RESULT_PREFIX` line per measurement. Nothing of ADM's is copied here.

FLOPs come from the parent, counted on our model of the same flags (the same architecture):
MFU counts the model's FLOPs, not the attention that ADM recomputes in every backward pass
(its attention blocks always checkpoint), and torch.utils.flop_counter's module tracking
cannot follow ADM's hand-written checkpoint function anyway.
"""

import json
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist

import measure


def import_adm(adm_dir):
    import guided_diffusion

    location = os.path.realpath(os.path.dirname(guided_diffusion.__file__))
    if not location.startswith(os.path.realpath(adm_dir)):
        raise SystemExit(f"adm_worker.py: imported guided_diffusion from {location}, not from {adm_dir}")
    from guided_diffusion import dist_util, logger, script_util, train_util

    return dist_util, logger, script_util, train_util


def one_rank_group():
    """The one-member process group ADM's TrainLoop expects. ADM's own setup_dist would do, but it
    looks up this host's name, which fails on machines without DNS; the group is the same either way."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def model_and_diffusion(script_util, flags, use_fp16, respacing=""):
    adm_flags = {k: flags[k] for k in script_util.model_and_diffusion_defaults()}
    return script_util.create_model_and_diffusion(**{**adm_flags, "use_fp16": use_fp16, "timestep_respacing": respacing})


def random_batch(flags, batch, device):
    generator = torch.Generator().manual_seed(0)
    shape = (batch, 3, flags["image_size"], flags["image_size"])
    return (torch.rand(shape, generator=generator) * 2 - 1).to(device)


def measure_training(adm, flags, precision, settings, device):
    dist_util, logger, script_util, train_util = adm
    model, diffusion = model_and_diffusion(script_util, flags, precision == "fp16")
    model.to(device)
    batch = settings["batch_size"]
    x = random_batch(flags, batch, device)
    loop = train_util.TrainLoop(
        model=model, diffusion=diffusion, data=None, batch_size=batch, microbatch=-1, lr=1e-4, ema_rate="0.9999",
        log_interval=10**9, save_interval=10**9, resume_checkpoint="", use_fp16=precision == "fp16",
    )
    measure.reset_peak_memory(device)
    seconds = measure.seconds_per_call(lambda: loop.run_step(x, {}), settings["train_steps"], settings["warmup"], device)
    peak = measure.peak_tflops(device, precision, settings.get("peak_tflops"))
    memory = measure.peak_memory_gib(device)
    return measure.training_row(f"ADM {precision}", batch, seconds, settings["training_flops"], peak, memory)


def measure_sampling(adm, flags, precision, settings, device):
    """DDPM over every step and DDIM-50, at settings["sample_batch"], halved until it fits."""
    _, _, script_util, _ = adm
    model, _ = model_and_diffusion(script_util, flags, precision == "fp16")
    model.to(device).eval()
    if precision == "fp16":
        model.convert_to_fp16()
    steps = flags["diffusion_steps"]
    rows = []
    for label, respacing, total in ((f"DDPM-{steps}", "", steps), ("DDIM-50", "ddim50", 50)):
        _, diffusion = model_and_diffusion(script_util, flags, False, respacing)
        batch = settings["sample_batch"]
        while True:
            shape = (batch, 3, flags["image_size"], flags["image_size"])
            if label.startswith("DDPM"):
                loop = diffusion.p_sample_loop_progressive(model, shape, device=device)
            else:
                loop = diffusion.ddim_sample_loop_progressive(model, shape, device=device, eta=0.0)
            timed = max(1, min(settings["sample_steps"], total - settings["warmup"]))
            measure.reset_peak_memory(device)
            try:
                seconds = measure.seconds_per_item(loop, timed, min(settings["warmup"], total - timed), device)
                break
            except torch.cuda.OutOfMemoryError:
                loop.close()
                torch.cuda.empty_cache()
                batch //= 2
                if batch < 1:
                    raise
        loop.close()
        rows.append(measure.sampling_row(f"ADM {label} {precision}", batch, seconds, total, settings["forward_flops_per_image"] * batch,
                                         measure.peak_memory_gib(device)))
    return rows


def main(argv):
    settings = json.loads(argv[0])
    adm = import_adm(settings["adm_dir"])
    dist_util, logger, _, _ = adm
    one_rank_group()
    device = dist_util.dev()
    flags = settings["flags"]
    with tempfile.TemporaryDirectory() as log_dir:
        logger.configure(dir=log_dir, format_strs=[])
        for precision in settings["precisions"]:
            if "train" in settings["parts"]:
                measure.emit(measure_training(adm, flags, precision, settings, device))
            if "sample" in settings["parts"]:
                for row in measure_sampling(adm, flags, precision, settings, device):
                    measure.emit(row)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
