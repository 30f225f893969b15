"""Training throughput (images/s over all ranks) of the tiny test UNet at 1 and 2 ranks.

    python -m scripts.benchmarks.train_throughput                 # CPU or GPU, mpiexec
    python -m scripts.benchmarks.train_throughput --launcher torchrun --ranks 1,2,4

Each run trains `--steps` iterations on a generated folder of random images and reads
progress.csv; the first logged interval (start-up, first batches) is left out.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from tests.tiny import TINY_MODEL_FLAGS, flag_list
from guided_diffusion.run.command_line import ArgumentParser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_MODEL = flag_list(TINY_MODEL_FLAGS)


def write_images(folder, count, size=16, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"img_{i:05d}.png"))


def command(launcher, ranks, script_args):
    script = [os.path.join(REPO, "scripts", "image_train.py")] + script_args
    if ranks == 1:
        return [sys.executable] + script
    if launcher == "mpiexec":
        return [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks), sys.executable] + script
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] + script


def measure(launcher, ranks, data_dir, work_dir, args):
    log_dir = os.path.join(work_dir, f"run{ranks}")
    script_args = TINY_MODEL + [
        "--data_dir", data_dir, "--log_dir", log_dir, "--batch_size", str(args.batch_size),
        "--max_steps", str(args.steps), "--log_interval", str(args.log_interval), "--save_interval", str(10**9),
        "--num_workers", str(args.num_workers), "--precision", args.precision,
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(command(launcher, ranks, script_args), env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"train_throughput.py: {ranks}-rank run failed:\n{result.stderr[-2000:]}")
    with open(os.path.join(log_dir, "progress.csv")) as f:
        rows = list(csv.DictReader(f))[1:]
    if not rows:
        raise SystemExit("train_throughput.py: too few steps for a measurement; raise --steps")
    return statistics.median(float(r["images_per_sec"]) for r in rows), statistics.median(float(r["steps_per_sec"]) for r in rows)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2", help="comma list of process counts")
    parser.add_argument("--launcher", choices=("mpiexec", "torchrun"), default="mpiexec")
    parser.add_argument("--batch_size", type=int, default=4, help="per rank")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log_interval", type=int, default=10)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    args = parser.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    with tempfile.TemporaryDirectory() as work_dir:
        data_dir = os.path.join(work_dir, "data")
        os.makedirs(data_dir)
        write_images(data_dir, args.batch_size * max(ranks) * 4)
        print(f"tiny UNet 16x16, batch {args.batch_size} per rank, {args.precision}, {args.launcher}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
        print(f"{'ranks':>5} {'images/s':>10} {'steps/s':>9}")
        for n in ranks:
            images, steps = measure(args.launcher, n, data_dir, work_dir, args)
            print(f"{n:>5} {images:>10.1f} {steps:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
