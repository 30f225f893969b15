"""Fetch torch-fidelity's Inception weights (with the logits layer the Inception Score needs) and check them.

Run on a machine with internet access, then copy the file to the offline one:

    python -m evaluations.fetch_inception --out weights-inception-2015-12-05-6726825d.pth

The download is accepted only when its SHA-256 is the published one (the
file name's 6726825d is its first 8 hex digits, as torch hub names files) and
it loads as a state dict with a finite logits layer. Point the evaluation at
it with `--inception_weights PATH` or DEBIAS_ADM_INCEPTION_WEIGHTS=PATH.
Without a network the command fails with one line naming the URL.
"""

import argparse
import hashlib
import os
import sys
import urllib.request

from guided_diffusion.run.atomic import check_writable

from .errors import EvaluationError
from guided_diffusion.run.command_line import ArgumentParser

URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
SIZE_BYTES = 95_628_359
TIMEOUT_S = 60
CHUNK = 1 << 20


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(path, expected_sha256=SHA256):
    """Refuse a file that is not the published weights or has no usable logits layer."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise EvaluationError(f"{path}: SHA-256 {actual} is not the published {expected_sha256}")
    import torch  # only after the cheap check: loading torch takes seconds

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "fc.weight" not in state or not bool(torch.isfinite(state["fc.weight"]).all()):
        raise EvaluationError(f"{path}: no finite logits layer 'fc.weight'")


def fetch(out, url=URL, expected_sha256=SHA256, timeout=TIMEOUT_S):
    """Download `url` to `out` through a temporary file, keeping it only when `check_weights` accepts it."""
    check_writable(out, "--out")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    partial = f"{out}.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as f:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
    except OSError as err:
        if os.path.exists(partial):
            os.unlink(partial)
        reason = getattr(err, "reason", None) or err
        raise EvaluationError(f"cannot download {url}: {reason}") from None
    try:
        check_weights(partial, expected_sha256)
    except BaseException:
        os.unlink(partial)
        raise
    os.replace(partial, out)
    return out


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to write the weights (.pth)")
    parser.add_argument("--url", default=URL, help="download from this mirror instead (same SHA-256 required)")
    args = parser.parse_args(argv)
    try:
        fetch(args.out, args.url)
    except (EvaluationError, OSError) as err:  # OSError: --out not writable (check_writable)
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (SHA-256 {SHA256}); use --inception_weights {args.out} or "
          f"DEBIAS_ADM_INCEPTION_WEIGHTS={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
