"""ADM-style logging: key/value tables on stdout and in log.txt, rows in progress.csv, and ADM's other formats.

Usage mirrors ADM's logger: `configure(dir)`, then `logkv(key, value)` for values set once
per interval, `logkv_mean(key, value)` for values averaged over the interval, `dumpkvs()`
to write one row, and `log(...)` / `warn(...)` for text lines.

ADM's OPENAI_LOG_FORMAT chooses the outputs (default `stdout,log,csv`): `stdout`, `log`
(log.txt), `csv` (progress.csv), `json` (progress.json, one object per row), `tensorboard`
(event files in tb/, through torch.utils.tensorboard) and `wandb` (when the wandb package is
installed; its own settings apply, e.g. WANDB_MODE=offline needs no network).

Every rank calls `dumpkvs()` together: interval means are combined over ranks (weighted
by how many values each rank logged), and only rank 0 writes. A remote log dir (gs://,
az://) cannot be appended to, so its text files are kept in a local staging folder and
uploaded by `sync()` (the training loop calls it at every checkpoint and at the end).
A resumed run drops the progress.csv rows past the step it resumes from
(`drop_rows_after`), so that every step appears once.
"""

import datetime
import json
import math
import os
import sys
import tempfile

import blobfile as bf
import torch.distributed as dist

from .run.atomic import atomic_write_text, is_remote


def _format_value(value):
    if isinstance(value, float):
        return f"{value:<8.3g}"
    return str(value)


class HumanOutput:
    """The ADM table, written to a stream (stdout) or appended to a file (log.txt)."""

    def __init__(self, stream):
        self.stream = stream

    def write_kvs(self, kvs):
        rows = [(key, _format_value(value).strip()) for key, value in sorted(kvs.items())]
        if not rows:
            return
        key_width = max(len(k) for k, _ in rows)
        value_width = max(len(v) for _, v in rows)
        dashes = "-" * (key_width + value_width + 7)
        lines = [dashes]
        lines += [f"| {k}{' ' * (key_width - len(k))} | {v}{' ' * (value_width - len(v))} |" for k, v in rows]
        lines.append(dashes)
        self.write_text("\n".join(lines) + "\n")

    def write_text(self, text):
        self.stream.write(text)
        self.stream.flush()


class CSVOutput:
    """progress.csv; a key first seen later extends the header and pads earlier rows."""

    def __init__(self, path):
        self.path = path
        self.keys = []
        if os.path.exists(path):
            with open(path) as f:
                header = f.readline().strip()
            self.keys = header.split(",") if header else []

    def write_kvs(self, kvs):
        new_keys = sorted(k for k in kvs if k not in self.keys)
        if new_keys:
            old_rows = []
            if os.path.exists(self.path):
                with open(self.path) as f:
                    old_rows = f.read().splitlines()[1:]
            self.keys.extend(new_keys)
            padding = "," * len(new_keys)
            with open(self.path, "w") as f:
                f.write(",".join(self.keys) + "\n")
                for row in old_rows:
                    f.write(row + padding + "\n")
        with open(self.path, "a") as f:
            f.write(",".join("" if kvs.get(k) is None else str(kvs[k]) for k in self.keys) + "\n")

    def drop_rows_after(self, key, limit):
        """Remove the rows whose numeric `key` exceeds `limit`; returns how many there were."""
        if key not in self.keys or not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            header, *rows = f.read().splitlines()
        column = self.keys.index(key)

        def past_limit(row):
            cells = row.split(",")
            try:
                return column < len(cells) and float(cells[column]) > limit
            except ValueError:
                return False

        kept = [row for row in rows if not past_limit(row)]
        if len(kept) != len(rows):
            atomic_write_text(self.path, "\n".join([header, *kept]) + "\n")
        return len(rows) - len(kept)


class JSONOutput:
    """progress.json: one JSON object per row, as ADM writes it."""

    def __init__(self, path):
        self.file = open(path, "a")

    def write_kvs(self, kvs):
        self.file.write(json.dumps({k: _plain(v) for k, v in sorted(kvs.items())}) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


class TensorBoardOutput:
    """Scalars in TensorBoard event files under `dir`, at the row's `step` (else the row count)."""

    def __init__(self, dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=dir)
        self.rows = 0

    def write_kvs(self, kvs):
        self.rows += 1
        step = int(kvs.get("step", self.rows))
        for key, value in _numbers(kvs).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbOutput:
    """Rows logged to Weights & Biases; the run is named after the log folder."""

    def __init__(self, dir, name):
        import wandb

        self.run = wandb.init(dir=dir, name=name, project=os.environ.get("WANDB_PROJECT", "debias-adm"))

    def write_kvs(self, kvs):
        numbers = _numbers(kvs)
        self.run.log(numbers, step=int(kvs["step"]) if "step" in kvs else None)

    def close(self):
        self.run.finish()


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _numbers(kvs):
    """The finite numeric values of a row."""
    numbers = {}
    for key, value in kvs.items():
        value = _plain(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[key] = value
    return numbers


LOG_FORMATS = ("stdout", "log", "csv", "json", "tensorboard", "wandb")
DEFAULT_LOG_FORMAT = "stdout,log,csv"


def log_formats(value=None):
    """The outputs named by `value`, by default ADM's OPENAI_LOG_FORMAT variable (else stdout,log,csv)."""
    if value is None:
        value = os.environ.get("OPENAI_LOG_FORMAT") or DEFAULT_LOG_FORMAT
    formats = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in formats if name not in LOG_FORMATS]
    if unknown:
        raise ValueError(f"OPENAI_LOG_FORMAT: unknown format(s) {', '.join(unknown)}; expected some of {', '.join(LOG_FORMATS)}")
    if "wandb" in formats:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("OPENAI_LOG_FORMAT asks for wandb, which is not installed: pip install wandb, or leave it out") from None
    return formats


# Files a resumed run continues rather than replaces.
_APPENDED_FILES = ("log.txt", "progress.csv", "progress.json")


class Logger:
    def __init__(self, dir, rank=0, formats=None):
        self.dir = dir
        self.rank = rank
        self.name_to_value = {}
        self.name_to_count = {}
        self.outputs = []
        self.text_outputs = []
        self._files = []
        self._local_dir = None
        if rank != 0 or dir is None:
            return
        formats = log_formats() if formats is None else list(formats)
        if is_remote(dir):
            self._local_dir = tempfile.mkdtemp(prefix="debias-adm-log-")
            # A resumed run continues the remote files rather than replacing them.
            for name in _APPENDED_FILES:
                if bf.exists(bf.join(dir, name)):
                    bf.copy(bf.join(dir, name), os.path.join(self._local_dir, name))
        else:
            os.makedirs(dir, exist_ok=True)
            self._local_dir = dir
        for name in formats:
            if name == "stdout":
                output = HumanOutput(sys.stdout)
                self.text_outputs.append(output)
            elif name == "log":
                self._files.append(open(os.path.join(self._local_dir, "log.txt"), "a"))
                output = HumanOutput(self._files[-1])
                self.text_outputs.append(output)
            elif name == "csv":
                output = CSVOutput(os.path.join(self._local_dir, "progress.csv"))
            elif name == "json":
                output = JSONOutput(os.path.join(self._local_dir, "progress.json"))
            elif name == "tensorboard":
                output = TensorBoardOutput(os.path.join(self._local_dir, "tb"))
            else:
                output = WandbOutput(self._local_dir, os.path.basename(os.path.normpath(dir)))
            self.outputs.append(output)

    def logkv(self, key, value):
        self.name_to_value[key] = value
        self.name_to_count.pop(key, None)

    def logkv_mean(self, key, value):
        count = self.name_to_count.get(key, 0)
        if count == 0:
            self.name_to_value[key] = float(value)
        else:
            self.name_to_value[key] += float(value)
        self.name_to_count[key] = count + 1

    def _combined_over_ranks(self):
        means = {k: (self.name_to_value[k], n) for k, n in self.name_to_count.items()}
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
        else:
            gathered = [means]
        totals = {}
        for rank_means in gathered:
            for key, (total, count) in rank_means.items():
                old_total, old_count = totals.get(key, (0.0, 0))
                totals[key] = (old_total + total, old_count + count)
        kvs = {k: v for k, v in self.name_to_value.items() if k not in self.name_to_count}
        kvs.update({k: total / count for k, (total, count) in totals.items()})
        return kvs

    def dumpkvs(self):
        """Write one row; collective over ranks. Returns the row (on every rank)."""
        kvs = self._combined_over_ranks()
        for output in self.outputs:
            output.write_kvs(kvs)
        self.name_to_value.clear()
        self.name_to_count.clear()
        return kvs

    def drop_rows_after(self, key, limit):
        """Drop the progress.csv rows past `limit` in column `key`: a resumed run writes them again."""
        return sum(output.drop_rows_after(key, limit) for output in self.outputs if isinstance(output, CSVOutput))

    def log(self, *args):
        text = " ".join(str(a) for a in args) + "\n"
        for output in self.text_outputs:
            output.write_text(text)

    def sync(self):
        """Upload the staged files (text logs, event files) when the log dir is remote; a no-op locally."""
        if self._local_dir is None or self._local_dir == self.dir:
            return
        for folder, _, names in os.walk(self._local_dir):
            relative = os.path.relpath(folder, self._local_dir)
            for name in names:
                target = bf.join(self.dir, name) if relative == "." else bf.join(self.dir, *relative.split(os.sep), name)
                bf.copy(os.path.join(folder, name), target, overwrite=True)

    def close(self):
        if self.outputs:
            for output in self.outputs:
                if hasattr(output, "close"):
                    output.close()
            self.sync()
            for file in self._files:
                file.close()
            self.outputs = []
            self.text_outputs = []
            self._files = []


_current = Logger(None)


def default_log_dir():
    """OPENAI_LOGDIR if set (ADM's convention), else a fresh time-stamped folder in the temp dir."""
    return os.environ.get("OPENAI_LOGDIR") or os.path.join(
        tempfile.gettempdir(), datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
    )


def configure(dir=None, rank=0, format_strs=None):
    """Start logging into `dir` (see `default_log_dir`) in `format_strs` (default: OPENAI_LOG_FORMAT, see
    `log_formats`); ranks other than 0 write nothing."""
    global _current
    formats = log_formats() if format_strs is None else log_formats(",".join(format_strs))
    _current.close()
    _current = Logger(dir or default_log_dir(), rank=rank, formats=formats)
    return _current


def get_dir():
    return _current.dir


def get_current():
    return _current


def logkv(key, value):
    _current.logkv(key, value)


def logkv_mean(key, value):
    _current.logkv_mean(key, value)


def dumpkvs():
    return _current.dumpkvs()


def drop_rows_after(key, limit):
    return _current.drop_rows_after(key, limit)


def log(*args):
    _current.log(*args)


def warn(*args):
    _current.log("WARNING:", *args)


def sync():
    _current.sync()


def close():
    _current.close()
