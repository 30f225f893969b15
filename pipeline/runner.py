"""Running a plan's stages: skip what is done, run the rest, isolate failures, summarise."""

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time

from . import launch

FINISHED_PREFIX = "# finished in"

# Stages that combine whatever cells succeeded; a failed cell must not hold them back.
_GATHERING_KINDS = ("tables", "figure", "report")


@dataclasses.dataclass
class Outcome:
    stage: str
    status: str  # done (already), ran, failed, blocked
    seconds: float = 0.0
    log: str = ""
    returncode: int | None = None


def pending_stages(stages):
    by_name = {s.name: s for s in stages}
    return [s.name for s in stages if not s.is_done(by_name)]


def describe(stages, plan, stream=sys.stdout, line=None):
    """The --dry-run listing: every stage, whether it is done, and its command (`line(stage)`, shell text)."""
    line = line or (lambda stage: launch.shell_line(launch.command(stage, plan.launcher, plan.nproc)))
    by_name = {s.name: s for s in stages}
    counts = {}
    for stage in stages:
        counts[stage.kind] = counts.get(stage.kind, 0) + 1
        state = "done   " if stage.is_done(by_name) else "pending"
        print(f"[{state}] {stage.name}", file=stream)
        print(f"    {line(stage)}", file=stream)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    print(f"{len(stages)} stages: {summary}", file=stream)
    return counts


def _log_path(plan, stage):
    return plan.under_root("logs", stage.name.replace("/", "__") + ".log")


def _run_one(stage, plan, echo, env_threads):
    log = _log_path(plan, stage)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    argv = launch.command(stage, plan.launcher, plan.nproc)
    env = launch.stage_environment(env_threads)
    start = time.time()
    with open(log, "wb") as f:
        f.write((launch.shell_line(argv) + "\n").encode())
        f.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        # Tee: the log keeps everything, the terminal shows the running stage's own progress.
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            f.write(chunk)
            f.flush()  # the heartbeat reads the log while the stage runs
            if echo:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        returncode = proc.wait()
        seconds = time.time() - start
        f.write(f"\n{FINISHED_PREFIX} {seconds:.1f} s (exit {returncode})\n".encode())
    return Outcome(stage.name, "ran" if returncode == 0 else "failed", seconds, log, returncode)


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PROGRESS_CHARS = 160


def last_progress(log):
    """The last line a stage wrote to its log (a progress bar's latest state included), shortened."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    pieces = [p.strip() for p in re.split(r"[\r\n]", _ANSI_ESCAPE.sub("", tail)) if p.strip()]
    text = pieces[-1] if pieces else ""
    return text if len(text) <= _PROGRESS_CHARS else text[: _PROGRESS_CHARS - 3] + "..."


def run(stages, plan, jobs=1, echo=None, stream=sys.stdout, heartbeat=30.0):
    """Run every unfinished stage in dependency order with up to `jobs` at once; returns the outcomes.

    With several stages at once their output goes to their logs only, so every
    `heartbeat` seconds the terminal gets one line per running stage: its name,
    time so far, log file and the last line it wrote (its progress bar).
    """
    by_name = {s.name: s for s in stages}
    echo = (jobs == 1) if echo is None else echo
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    outcomes = {}
    running = {}
    lock = threading.Lock()
    start_all = time.time()
    last_beat = [start_all]

    def say(text):
        with lock:
            print(f"[{time.time() - start_all:7.1f}s] {text}", file=stream, flush=True)

    def beat():
        with lock:
            now_running = dict(running)
        for name, (_, started) in now_running.items():
            progress = last_progress(_log_path(plan, by_name[name]))
            say(f"  running {name} ({time.time() - started:.0f}s): {progress or 'starting'}")
        last_beat[0] = time.time()

    def worker(stage):
        outcome = _run_one(stage, plan, echo, threads)
        with lock:
            outcomes[stage.name] = outcome
            running.pop(stage.name, None)
        if outcome.status == "ran":
            say(f"finished {stage.name} in {outcome.seconds:.1f}s")
        else:
            say(f"FAILED {stage.name} (exit {outcome.returncode}) after {outcome.seconds:.1f}s; log: {outcome.log}")

    remaining = list(stages)

    def next_ready():
        # The first stage in plan order whose dependencies have all ended.
        with lock:
            for stage in remaining:
                if all(d in outcomes for d in stage.deps):
                    return stage
        return None

    while remaining or running:
        if not echo and running and time.time() - last_beat[0] >= heartbeat:
            beat()
        stage = next_ready() if len(running) < jobs else None
        if stage is None:
            time.sleep(0.2)
            continue
        remaining.remove(stage)
        blocked = [d for d in stage.deps if outcomes[d].status in ("failed", "blocked")]
        if blocked and stage.kind not in _GATHERING_KINDS:
            outcomes[stage.name] = Outcome(stage.name, "blocked", log=", ".join(blocked))
            say(f"skipped {stage.name}: needs {', '.join(blocked)}")
        elif stage.is_done(by_name):
            outcomes[stage.name] = Outcome(stage.name, "done")
        else:
            say(f"started {stage.name}" + ("" if echo else f" (log: {_log_path(plan, stage)})"))
            thread = threading.Thread(target=worker, args=(stage,), daemon=True)
            with lock:
                running[stage.name] = (thread, time.time())
            thread.start()
    return [outcomes[s.name] for s in stages]


def summarize(outcomes, stream=sys.stdout):
    counts = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(
        "summary: "
        + ", ".join(f"{counts.get(k, 0)} {label}" for k, label in (("ran", "ran"), ("done", "already done"), ("failed", "failed"), ("blocked", "blocked"))),
        file=stream,
    )
    for o in outcomes:
        if o.status == "failed":
            print(f"  failed: {o.stage} (exit {o.returncode}); log: {o.log}", file=stream)
        elif o.status == "blocked":
            print(f"  blocked: {o.stage} (needs {o.log})", file=stream)
    return counts
