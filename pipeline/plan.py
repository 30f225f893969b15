"""Reproduction plans: a TOML file naming the grid of datasets, weightings, checkpoints and samplers.

A plan looks like

    [plan]
    name = "table1"
    root = "work/table1"          # data/, refs/, runs/, samples/, results/ go below it
    launcher = "mpiexec"          # local | mpiexec | torchrun | slurm
    nproc = 8

    [train]                        # flags for scripts/image_train.py, for every run
    max_steps = 500000
    save_interval = 50000

    [sample]
    num_samples = 50000
    batch_size = 64
    samplers = [{ sampler = "ddpm", steps = [1000, 500, 250, 100] }]   # evaluate = false: sample, no FID

    [[datasets]]
    name = "ffhq"                  # a dataset of datasets/ (prepare.py)
    source = "downloads/ffhq.zip"  # or data_dir = "..." for an already prepared folder
    config = "configs/ffhq.toml"
    runs = ["constant", "p2", "min_snr", "debias"]   # weighting[@target (eps|x0|v)][+timestep sampler]
    iterations = [500000]          # which checkpoints to sample and evaluate

    [evaluate]                     # flags for evaluations.fid; metrics = ["is"] adds --is,
    ref_flags = { num_images = 500 }   # ref_flags go to evaluations.ref_stats

    [figures.mse_step]             # an analysis script; inputs come from the grid (see stages.py)
    script = "mse_step"
    inputs = ["config", "checkpoints", "data"]

    [report]
    out = "reports/demo"

[train], [sample], [evaluate] and [prepare] may also appear inside a [[datasets]] entry to override
the plan-wide ones for that dataset. A sampler entry may carry `iterations` and `runs` to apply
only to some checkpoints and runs (e.g. Table 4's x0 and v runs at T=100 only).
"""

import dataclasses
import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

from guided_diffusion import samplers
from guided_diffusion.resample import UNIFORM, check_schedule_sampler
from guided_diffusion.targets import DEFAULT_TARGET, check_target
from guided_diffusion.train_util import training_defaults
from guided_diffusion.weighting import check_weight_schedule

from .launch import REPO_ROOT

LAUNCHERS = ("local", "mpiexec", "torchrun", "slurm")


class PlanError(ValueError):
    """A plan file that cannot be run as written."""


def resolve_config_path(path):
    """A dataset config as written, or, when that does not exist from here, the one of this checkout
    (`configs/ffhq.toml` in a shipped plan works from any working directory)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_checkout = os.path.join(REPO_ROOT, path)
    return in_checkout if os.path.exists(in_checkout) else path


DEFAULT_SEED = training_defaults()["seed"]


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained model: a weighting, a prediction target, a timestep sampler and a training seed.

    Written `weighting[@target][+schedule_sampler][#seedN]`, e.g. "debias", "constant@x0",
    "debias+loss-weight", "p2#seed1"; the sampler and the seed are part of the name only where they are
    not ADM's uniform one and --seed's default.
    """

    weight_schedule: str
    target: str = DEFAULT_TARGET
    schedule_sampler: str = UNIFORM
    seed: int = DEFAULT_SEED

    @property
    def name(self):
        name = self.weight_schedule if self.target == DEFAULT_TARGET else f"{self.weight_schedule}@{self.target}"
        name = name if self.schedule_sampler == UNIFORM else f"{name}+{self.schedule_sampler}"
        return name if self.seed == DEFAULT_SEED else f"{name}#seed{self.seed}"

    @property
    def dir_name(self):
        name = self.weight_schedule if self.target == DEFAULT_TARGET else f"{self.target}_{self.weight_schedule}"
        name = name if self.schedule_sampler == UNIFORM else f"{name}+{self.schedule_sampler}"
        return name if self.seed == DEFAULT_SEED else f"{name}_seed{self.seed}"

    @property
    def first_seed(self):
        """The same model trained from --seed's default: what another seed of it is a repetition of."""
        return dataclasses.replace(self, seed=DEFAULT_SEED)

    @classmethod
    def of_cell(cls, field):
        """The run a results cell ({CELL_FIELDS name: value}) evaluated."""
        return cls(field["weight_schedule"], field["pred"], field["schedule_sampler"], int(field["train_seed"]))

    @classmethod
    def parse(cls, text, where):
        body, hash_sign, seed_text = str(text).partition("#")
        model, _, timesteps = body.partition("+")
        weighting, _, target = model.partition("@")
        digits = seed_text[len("seed"):] if seed_text.startswith("seed") else ""
        if hash_sign and not (digits.isascii() and digits.isdigit()):
            raise PlanError(f"{where}: run {text!r}: the seed is written #seedN with N a whole number, e.g. 'debias#seed1'")
        try:
            return cls(check_weight_schedule(weighting), check_target(target or DEFAULT_TARGET),
                       check_schedule_sampler(timesteps or UNIFORM), int(digits) if hash_sign else DEFAULT_SEED)
        except ValueError as err:
            raise PlanError(f"{where}: run {text!r}: {err}") from None


# Set per run by the grid (`runs = ["debias", "constant@x0", ...]`); a [train] value would give every
# run the same objective under different labels.
PER_RUN_KEYS = ("weight_schedule", "predict_xstart", "predict_v", "seed")


def _check_train_table(train, where):
    """Refuse, before anything runs, a [train] key no training accepts, one the grid sets per run, or a
    schedule parameter outside its range."""
    from guided_diffusion.train_util import image_train_defaults
    from guided_diffusion.weighting import check_parameter_values

    per_run = sorted(k for k in train if k in PER_RUN_KEYS)
    if per_run:
        raise PlanError(
            f"{where}: [train] {', '.join(per_run)} is set per run by 'runs' (e.g. runs = [\"debias\", \"constant@x0\", \"p2#seed1\"]); "
            "remove it from [train]"
        )
    unknown = sorted(set(train) - set(image_train_defaults()))
    if unknown:
        raise PlanError(f"{where}: [train] has key(s) {', '.join(unknown)} that scripts/image_train.py does not take")
    try:
        check_parameter_values(train)
        if "schedule_sampler" in train:
            check_schedule_sampler(train["schedule_sampler"])
    except ValueError as err:
        raise PlanError(f"{where}: [train] {err}") from None


def _check_step_counts(samplers, config, train, where):
    """A sampler cannot take more steps than the diffusion has (its T, from [train] or the config)."""
    from guided_diffusion.script_util import load_config, model_and_diffusion_defaults

    if not samplers:
        return
    defaults = model_and_diffusion_defaults()
    steps_of_diffusion = train.get("diffusion_steps")
    if steps_of_diffusion is None:
        try:
            steps_of_diffusion = load_config(config, defaults, sections=("diffusion",)).get(
                "diffusion_steps", defaults["diffusion_steps"])
        except FileNotFoundError:
            raise PlanError(f"{where}: config {config}: no such file") from None
    too_many = sorted({f"{s.sampler} {s.steps}" for s in samplers if s.steps > int(steps_of_diffusion)})
    if too_many:
        raise PlanError(f"{where}: {', '.join(too_many)} steps, but the diffusion of {config} has only "
                        f"{steps_of_diffusion} (diffusion_steps)")


@dataclasses.dataclass(frozen=True)
class SamplerSetting:
    """A sampler at a step count, optionally only for some checkpoints and runs of the dataset.

    `evaluate` False samples the cell for the figures (colour statistics, say) without an Inception pass.
    """

    sampler: str
    steps: int
    iterations: tuple = ()
    runs: tuple = ()
    evaluate: bool = True

    def applies_to(self, iteration, run):
        return (not self.iterations or iteration in self.iterations) and (not self.runs or run.name in self.runs)

    @property
    def name(self):
        return f"{self.sampler}{self.steps}"

    def flags(self):
        """The sampling flags of this setting (the sampler's own way of asking for `steps`)."""
        return {"sampler": self.sampler, **samplers.steps_flags(self.sampler, self.steps)}


@dataclasses.dataclass
class DatasetPlan:
    name: str
    config: str
    data_dir: str
    source: str | None
    prepare_args: dict
    runs: list
    iterations: list
    train: dict
    sample: dict
    samplers: list
    evaluate: dict
    ref: str | None


@dataclasses.dataclass
class Plan:
    path: str
    name: str
    root: str
    launcher: str
    nproc: int
    slurm: dict
    datasets: list
    figures: dict
    report: dict

    def under_root(self, *parts):
        return os.path.join(self.root, *parts)


def _table(raw, key, where):
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise PlanError(f"{where}: [{key}] must be a table")
    return value


def _merged(plan_wide, per_dataset):
    merged = dict(plan_wide)
    merged.update(per_dataset)
    return merged


def _samplers(sample, where):
    settings = []
    for entry in sample.get("samplers", [{"sampler": "ddpm", "steps": [1000]}]):
        sampler = entry.get("sampler")
        if sampler not in samplers.SAMPLERS:
            raise PlanError(f"{where}: sampler {sampler!r}; expected one of {', '.join(samplers.sampler_names())}")
        steps = entry.get("steps", [])
        if not steps or any(not isinstance(s, int) or s < 1 for s in steps):
            raise PlanError(f"{where}: sampler {sampler} needs a list of positive step counts, got {steps!r}")
        iterations = tuple(int(i) for i in entry.get("iterations", ()))
        runs = tuple(Run.parse(r, where).name for r in entry.get("runs", ()))
        unknown = set(entry) - {"sampler", "steps", "iterations", "runs", "evaluate"}
        if unknown:
            raise PlanError(f"{where}: sampler entry has unknown key(s) {', '.join(sorted(unknown))}")
        evaluate = entry.get("evaluate", True)
        if not isinstance(evaluate, bool):
            raise PlanError(f"{where}: sampler {sampler}: 'evaluate' must be true or false, got {evaluate!r}")
        settings.extend(SamplerSetting(sampler, s, iterations, runs, evaluate) for s in steps)
    return settings


def load_plan(path, root=None):
    """Read and check a plan; `root` overrides [plan].root."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise PlanError(f"plan {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"plan {path}: not valid TOML ({e})") from None
    known = {"plan", "train", "sample", "evaluate", "prepare", "datasets", "figures", "report", "slurm"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"plan {path}: unknown table(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    head = _table(raw, "plan", path)
    launcher = head.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise PlanError(f"plan {path}: launcher {launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    nproc = int(head.get("nproc", 1))
    if nproc < 1:
        raise PlanError(f"plan {path}: nproc must be at least 1, got {nproc}")
    plan_root = root or head.get("root") or os.path.join("work", head.get("name", os.path.splitext(os.path.basename(path))[0]))

    datasets = []
    entries = raw.get("datasets", [])
    if not entries:
        raise PlanError(f"plan {path}: no [[datasets]] entries")
    seen = set()
    for i, entry in enumerate(entries):
        where = f"plan {path}, datasets[{i}]"
        name = entry.get("name")
        if not name:
            raise PlanError(f"{where}: missing 'name'")
        label = entry.get("label", name)
        if label in seen:
            raise PlanError(f"{where}: dataset {label!r} appears twice; give one a distinct 'label'")
        seen.add(label)
        config = entry.get("config")
        if not config:
            raise PlanError(f"{where}: missing 'config' (a file of configs/)")
        config = resolve_config_path(config)
        if name != "embedded" and not entry.get("source") and not entry.get("data_dir"):
            raise PlanError(f"{where}: give 'source' (to prepare) or 'data_dir' (already prepared)")
        runs = [Run.parse(r, where) for r in entry.get("runs", ["constant", "p2", "min_snr", "debias"])]
        run_names = {r.name for r in runs}
        if len(run_names) < len(runs):
            twice = sorted({r.name for r in runs if sum(other.name == r.name for other in runs) > 1})
            raise PlanError(f"{where}: run(s) {', '.join(twice)} listed twice; each would train into the same log dir")
        train = _merged(_table(raw, "train", path), _table(entry, "train", where))
        _check_train_table(train, where)
        sample = _merged(_table(raw, "sample", path), _table(entry, "sample", where))
        num_samples = sample.get("num_samples", 1)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise PlanError(f"{where}: [sample] num_samples = {num_samples!r}; expected at least 1 (a whole number)")
        samplers = _samplers(sample, where)
        foreign = sorted({r for s in samplers for r in s.runs} - run_names)
        if foreign:
            raise PlanError(f"{where}: sampler entries name runs {', '.join(foreign)} that the dataset does not train")
        iterations = [int(x) for x in entry.get("iterations", [train.get("max_steps", 0)])]
        iterations = sorted(set(iterations) | {i for s in samplers for i in s.iterations})
        if not iterations or any(it < 1 for it in iterations):
            raise PlanError(f"{where}: 'iterations' must list checkpoint steps >= 1 (or set [train] max_steps)")
        max_steps = int(train.get("max_steps", max(iterations)))
        if max(iterations) > max_steps:
            raise PlanError(f"{where}: iteration {max(iterations)} is beyond [train] max_steps {max_steps}")
        save_interval = int(train.get("save_interval", max_steps))
        unsaved = [it for it in iterations if it % save_interval and it != max_steps]
        if unsaved:
            raise PlanError(
                f"{where}: iterations {unsaved} are not multiples of save_interval {save_interval}, so no checkpoint exists there"
            )
        keep, every = int(train.get("keep_checkpoints", 0)), int(train.get("keep_every", 0))
        pruned = [it for it in iterations if keep > 0 and it != max_steps and (every <= 0 or it % every)]
        if pruned:
            raise PlanError(
                f"{where}: keep_checkpoints {keep} would delete the checkpoints of iterations {pruned} before they are "
                f"sampled; set keep_every to a divisor of them"
            )
        _check_step_counts(samplers, config, train, where)
        train = {**train, "max_steps": max_steps, "save_interval": save_interval}
        datasets.append(
            DatasetPlan(
                name=label,
                config=config,
                data_dir=entry.get("data_dir") or os.path.join(plan_root, "data", label),
                source=entry.get("source"),
                prepare_args=_merged(_table(raw, "prepare", path), _table(entry, "prepare", where)),
                runs=runs,
                iterations=iterations,
                train=train,
                sample={k: v for k, v in sample.items() if k != "samplers"},
                samplers=samplers,
                evaluate=_merged(_table(raw, "evaluate", path), _table(entry, "evaluate", where)),
                ref=entry.get("ref"),
            )
        )
    return Plan(
        path=path,
        name=head.get("name", os.path.splitext(os.path.basename(path))[0]),
        root=plan_root,
        launcher=launcher,
        nproc=nproc,
        slurm=_table(raw, "slurm", path),
        datasets=datasets,
        figures=_table(raw, "figures", path),
        report=_table(raw, "report", path),
    )
