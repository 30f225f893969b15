"""ADM-style logging: key/value tables on stdout and in log.txt, rows in progress.csv.

Usage mirrors ADM's logger: `configure(dir)`, then `logkv(key, value)` for values set once
per interval, `logkv_mean(key, value)` for values averaged over the interval, `dumpkvs()`
to write one row, and `log(...)` / `warn(...)` for text lines.

Every rank calls `dumpkvs()` together: interval means are combined over ranks (weighted
by how many values each rank logged), and only rank 0 writes. A remote log dir (gs://,
az://) cannot be appended to, so its text files are kept in a local staging folder and
uploaded by `sync()` (the training loop calls it at every checkpoint and at the end).
A resumed run drops the progress.csv rows past the step it resumes from
(`drop_rows_after`), so that every step appears once.
"""

import datetime
import os
import sys
import tempfile

import blobfile as bf
import torch.distributed as dist

from .atomic import atomic_write_text, is_remote


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


class Logger:
    def __init__(self, dir, rank=0):
        self.dir = dir
        self.rank = rank
        self.name_to_value = {}
        self.name_to_count = {}
        self.outputs = []
        self.text_outputs = []
        self._local_dir = None
        if rank != 0 or dir is None:
            return
        if is_remote(dir):
            self._local_dir = tempfile.mkdtemp(prefix="debias-adm-log-")
            # A resumed run continues the remote files rather than replacing them.
            for name in ("log.txt", "progress.csv"):
                if bf.exists(bf.join(dir, name)):
                    bf.copy(bf.join(dir, name), os.path.join(self._local_dir, name))
        else:
            os.makedirs(dir, exist_ok=True)
            self._local_dir = dir
        self._log_file = open(os.path.join(self._local_dir, "log.txt"), "a")
        stdout, log_txt = HumanOutput(sys.stdout), HumanOutput(self._log_file)
        self.outputs = [stdout, log_txt, CSVOutput(os.path.join(self._local_dir, "progress.csv"))]
        self.text_outputs = [stdout, log_txt]

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
        """Upload the staged text files when the log dir is remote; a no-op locally."""
        if self._local_dir is None or self._local_dir == self.dir:
            return
        for name in ("log.txt", "progress.csv"):
            local = os.path.join(self._local_dir, name)
            if os.path.exists(local):
                bf.copy(local, bf.join(self.dir, name), overwrite=True)

    def close(self):
        if self.outputs:
            self.sync()
            self._log_file.close()
            self.outputs = []
            self.text_outputs = []


_current = Logger(None)


def default_log_dir():
    """OPENAI_LOGDIR if set (ADM's convention), else a fresh time-stamped folder in the temp dir."""
    return os.environ.get("OPENAI_LOGDIR") or os.path.join(
        tempfile.gettempdir(), datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
    )


def configure(dir=None, rank=0):
    """Start logging into `dir` (see `default_log_dir`); ranks other than 0 write nothing."""
    global _current
    _current.close()
    _current = Logger(dir or default_log_dir(), rank=rank)
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
