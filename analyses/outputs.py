"""Where an analysis writes, and writing its PNG, CSV and NPZ files atomically."""

import csv
import io
import os
import re

import numpy as np

from guided_diffusion.run.atomic import atomic_open, atomic_write_bytes, atomic_write_text

DEFAULT_OUTPUT_DIR = os.path.join("results", "analysis")
_FILE_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def output_prefix(out, analysis_name):
    """The path prefix of an analysis' files (`<prefix>.png`, `<prefix>.csv`, `<prefix>_<part>.png`).

    `out` is a directory (an existing one, or any path ending in a separator),
    giving `<out>/<analysis_name>`, or a prefix (a trailing .png/.csv is dropped);
    None or "" means `results/analysis/<analysis_name>`. Missing directories are created.
    """
    if not out:
        prefix = os.path.join(DEFAULT_OUTPUT_DIR, analysis_name)
    elif out.endswith(("/", os.sep)) or os.path.isdir(out):
        prefix = os.path.join(out, analysis_name)
    else:
        root, extension = os.path.splitext(out)
        prefix = root if extension.lower() in (".png", ".csv") else out
    directory = os.path.dirname(prefix)
    if directory:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--out {out!r}: cannot create directory {directory!r} ({err.strerror})") from None
    return prefix


def check_file_safe_name(name, what):
    """Names become parts of file names, so they are restricted to letters, digits and _.+-."""
    if not _FILE_SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: expected letters, digits and _.+- only (it names output files)")
    return name


def write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def read_csv(path):
    """The rows of a CSV written by `write_csv`, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_figure(figure, path, dpi=None):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_npz(path, **arrays):
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return path
