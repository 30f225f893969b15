"""A plan checked whole before any stage runs, so that a typo costs seconds, not a night of training.

Every key of [plan], [report], [slurm] and of each [[datasets]] entry is one the pipeline reads;
each dataset to prepare is one datasets/ knows; and every stage's command line is one its script
takes, asked of the script's own parser (`command_line.parse_only`), so a key of [prepare],
[sample], [evaluate] (and its ref_flags) or [figures.NAME] that becomes a flag no script has, or a
value of the wrong type, is refused here with the section it came from. Training, sampling and
evaluation also check their values (`check_command_line`), so a value outside its range is too.
"""

import contextlib
import importlib
import io
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from guided_diffusion.run.command_line import CommandLineRefused, Parsed, parse_only

from .launch import REPO_ROOT
from .plan import PlanError
from .slurm import LAYOUT_KEYS, SBATCH_OPTIONS

PLAN_KEYS = ("name", "root", "launcher", "nproc")
REPORT_KEYS = ("out", "intro", "outro")
DATASET_KEYS = ("name", "label", "source", "data_dir", "config", "runs", "iterations", "ref",
                "train", "sample", "evaluate", "prepare")
# The plan section a stage's flags come from, by stage kind.
SECTION_OF_KIND = {"prepare": "[prepare]", "ref": "[evaluate] ref_flags", "train": "[train]", "sample": "[sample]",
                   "evaluate": "[evaluate]", "tables": "the tables stage", "report": "[report]"}


def _refuse_unknown(table, known, where, section):
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise PlanError(f"{where}: {section} has unknown key(s) {', '.join(unknown)}; expected {', '.join(known)}")


def check_keys(plan):
    """Refuse a key of [plan], [report], [slurm] or a [[datasets]] entry that nothing reads, and a dataset
    to prepare that datasets/ does not know."""
    from datasets import DATASET_MODULES

    with open(plan.path, "rb") as f:
        raw = tomllib.load(f)
    where = f"plan {plan.path}"
    _refuse_unknown(raw.get("plan", {}), PLAN_KEYS, where, "[plan]")
    _refuse_unknown(raw.get("report", {}), REPORT_KEYS, where, "[report]")
    _refuse_unknown({k.replace("-", "_") for k in raw.get("slurm", {})}, LAYOUT_KEYS + SBATCH_OPTIONS, where, "[slurm]")
    for i, (entry, ds) in enumerate(zip(raw.get("datasets", []), plan.datasets)):
        _refuse_unknown(entry, DATASET_KEYS, f"{where}, datasets[{i}]", "the entry")
        if ds.source is not None or ds.name == "embedded":
            kind = ds.prepare_args.get("dataset", entry.get("name"))
            if kind not in DATASET_MODULES:
                raise PlanError(f"{where}, datasets[{i}]: dataset {kind!r} is not one datasets/ prepares; expected one of "
                                f"{', '.join(sorted(DATASET_MODULES))} (or give data_dir for an already prepared folder)")


def _origin(plan, stage):
    """Where in the plan a stage's flags come from: (where, section)."""
    if stage.kind == "figure":
        return f"plan {plan.path}", f"[figures.{stage.name.split('/', 1)[1]}]"
    label = stage.name.split("/")[1] if "/" in stage.name else None
    index = [ds.name for ds in plan.datasets].index(label) if label in [ds.name for ds in plan.datasets] else None
    where = f"plan {plan.path}" + (f", datasets[{index}]" if index is not None else "")
    return where, SECTION_OF_KIND.get(stage.kind, f"the {stage.kind} stage")


def refusal(module, argv):
    """Why `module`'s main would refuse `argv` on its command line, or None when its parser takes it."""
    with parse_only(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as said:
        try:
            importlib.import_module(module).main(list(argv))
        except Parsed:
            return None
        except CommandLineRefused as refused:
            return str(refused)
    return " | ".join(line for line in said.getvalue().splitlines() if line.strip()) or "it ended before parsing"


def refused_value(module, argv):
    """Why `module` would refuse a value of `argv` that its parser takes (a negative --lr, --bootstrap 1), or None.

    Asked of the entry points that define `check_command_line(argv)`, a check of the values that reads no
    data and runs nothing."""
    check = getattr(importlib.import_module(module), "check_command_line", None)
    if check is None:
        return None
    try:
        check(list(argv))
    except ValueError as refused:
        return str(refused)
    return None


def check_stage_command_lines(plan, stages):
    """Refuse a stage whose script would refuse its command line (an unknown flag, a value of the wrong type or,
    where the script can say so without running, out of its range)."""
    for stage in stages:
        where, section = _origin(plan, stage)
        module = stage.argv[1]
        # Stages run their module from the checkout (`python -m scripts.image_train`), so it is looked up there
        # too when this process was started as `python scripts/reproduce.py`.
        if REPO_ROOT not in sys.path:
            sys.path.append(REPO_ROOT)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as missing:
            if missing.name != module:
                raise
            raise PlanError(f"{where}: {section}: no script {module} (script names a module of scripts/analysis)") from None
        why = refusal(module, stage.argv[2:]) or refused_value(module, stage.argv[2:])
        if why is not None:
            raise PlanError(f"{where}: {section} is passed to python -m {module}, which refuses it: {why}")


def check_plan(plan, stages):
    check_keys(plan)
    check_stage_command_lines(plan, stages)
