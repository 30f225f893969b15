"""Peak memory of merging sample batch files into ADM's npz, against the size of the result.

    python -m scripts.benchmarks.merge_memory --num_samples 20000 --image_size 64

Writes `num_samples` random uint8 images as batch files (the layout of
image_sample.py's out_dir/batches), merges them in a fresh process and reports
that process's peak resident set size (ru_maxrss), next to a process that only
imports the same modules. A merge that held the images in memory would need
the whole array on top of the baseline; the streaming merge needs about one batch.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from guided_diffusion import sampling
from guided_diffusion.run.command_line import ArgumentParser

CHILD = """
import resource, sys, time
from guided_diffusion import sampling
batch_dir, num_samples, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.time()
if out_path:
    sampling.merge_batches(batch_dir, num_samples, out_path)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time() - start)
"""


def peak_rss_mib(batch_dir, num_samples, out_path):
    """(peak RSS in MiB, seconds) of a child process that merges, or only imports when out_path is ''."""
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, batch_dir, str(num_samples), out_path], capture_output=True, text=True, check=True
    )
    kib, seconds = completed.stdout.split()
    return int(kib) / 1024, float(seconds)


def write_batches(batch_dir, num_samples, image_size, batch_size, seed):
    os.makedirs(batch_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        images = rng.integers(0, 256, size=(count, image_size, image_size, 3), dtype=np.uint8)
        labels = np.arange(first, first + count) % 1000
        sampling.write_batch_file(batch_dir, first, images, labels)


def check_merged(out_path, batch_dir, num_samples):
    """Compare the merged npz with the batch files, one batch at a time (no full load here either)."""
    import zipfile

    with zipfile.ZipFile(out_path) as zf, zf.open("arr_0.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
        assert shape[0] == num_samples and dtype == np.uint8, (shape, dtype)
        for _, images, _ in sampling.iter_samples_in_order(batch_dir, num_samples):
            chunk = np.frombuffer(member.read(images.nbytes), dtype=np.uint8).reshape(images.shape)
            assert np.array_equal(chunk, images)
    with np.load(out_path) as data:
        assert np.array_equal(data["arr_1"], np.arange(num_samples) % 1000)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=20000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--work_dir", default=None, help="where to put the synthetic run (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        batch_dir = os.path.join(work, "batches")
        start = time.time()
        write_batches(batch_dir, args.num_samples, args.image_size, args.batch_size, seed=0)
        print(f"wrote {args.num_samples} images as {len(os.listdir(batch_dir))} batch files in {time.time() - start:.1f} s")
        shape = (args.num_samples, args.image_size, args.image_size, 3)
        out_path = os.path.join(work, sampling.samples_file_name(shape))
        baseline, _ = peak_rss_mib(batch_dir, args.num_samples, "")
        merge_peak, seconds = peak_rss_mib(batch_dir, args.num_samples, out_path)
        check_merged(out_path, batch_dir, args.num_samples)
        array_mib = np.prod(shape) / 2**20
        batch_mib = args.batch_size * np.prod(shape[1:]) / 2**20
        print(f"arr_0 {'x'.join(map(str, shape))} uint8: {array_mib:.0f} MiB; one batch {batch_mib:.2f} MiB; "
              f"npz {os.path.getsize(out_path) / 2**20:.0f} MiB, merged in {seconds:.1f} s")
        print(f"peak RSS: import only {baseline:.0f} MiB, merge {merge_peak:.0f} MiB "
              f"(+{merge_peak - baseline:.0f} MiB for a {array_mib:.0f} MiB array)")


if __name__ == "__main__":
    main()
