"""The sampler registry: every way of drawing a batch of samples, by name.

A sampler is one `register_sampler` call. The sampling script, plans and the
few-step figure read the names, flags and step counts from here, so a new
sampler needs no other edit. Built in: ADM's ancestral sampler (`ddpm`), DDIM
(`ddim`), DPM-Solver++ (`dpm_solver`) and UniPC (`unipc`), and the two fast
samplers exactly as the paper's code (yuhuUSTC/Debias) runs its `--sampler
dpm_solver` and `--sampler unipc` (`paper_dpm_solver`, `paper_unipc`).
"""

import dataclasses
import math

from .respace import space_timesteps
from .solvers import fast_samplers
from .solvers.dpm_solver import LOWER_ORDER_FINAL_ALWAYS, sample_dpm_solver, sample_dpm_solver_pp
from .solvers.noise_schedule import SKIP_TYPES
from .solvers.unipc import VARIANTS as UNIPC_VARIANTS
from .solvers.unipc import sample_unipc


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How to draw a batch.

    `run(model, diffusion, shape, *, model_kwargs, noise_source, device, flags)`
    returns a float batch in [-1, 1] (clipped later). `options` names the
    flags it reads (they define its images). `check(flags)` raises ValueError
    for flags it cannot use. With `respaced` the sampler runs on the process
    respaced by --timestep_respacing (ADM's samplers); otherwise on the full
    training process, taking its step count from `steps_from(flags)`.
    `respacing_prefix` is what a request for T steps puts before T in
    --timestep_respacing ("ddim" gives ADM's exact-stride DDIM spacing).
    `summary` is its line in --help.
    """

    run: object
    options: tuple = ()
    check: object = None
    respaced: bool = True
    respacing_prefix: str = ""
    summary: str = ""


SAMPLERS = {}

# Defaults of every sampler's own flags; a flag set away from its default for a
# sampler that does not read it is an error, not silently ignored.
SAMPLER_OPTION_DEFAULTS = dict(eta=0.0)
# Network evaluations per sample of a fast sampler without --timestep_respacing N.
FAST_DEFAULT_STEPS = 20
# Their --help lines.
SAMPLER_OPTION_HELP = dict(eta="DDIM's eta: 0 is deterministic, 1 adds DDPM's noise (ddim only)")

# Options every sampler may read without declaring a default here (the sampling script owns them).
_SHARED_OPTIONS = ("clip_denoised",)


def register_sampler(
    name, run, options=(), option_defaults=None, check=None, respaced=True, respacing_prefix="", summary="",
    option_help=None,
):
    """Add (or replace) the sampler for --sampler `name`; see `Sampler`.

    `run` must draw every random number from `noise_source.randn_like`, so that
    sample i depends on (seed, i) alone. New flags get their defaults from
    `option_defaults` and their --help lines from `option_help`.
    """
    for key, value in (option_defaults or {}).items():
        if SAMPLER_OPTION_DEFAULTS.get(key, value) != value:
            raise ValueError(f"sampler {name!r} gives flag {key} default {value!r}, others {SAMPLER_OPTION_DEFAULTS[key]!r}")
        SAMPLER_OPTION_DEFAULTS[key] = value
    unknown = [o for o in options if o not in SAMPLER_OPTION_DEFAULTS and o not in _SHARED_OPTIONS]
    if unknown:
        raise ValueError(f"sampler {name!r} reads flag(s) without a default: {', '.join(unknown)}")
    SAMPLER_OPTION_HELP.update(option_help or {})
    SAMPLERS[name] = Sampler(run, tuple(options), check, respaced, respacing_prefix, summary)


def sampler_names():
    return list(SAMPLERS)


def get_sampler(name):
    if name not in SAMPLERS:
        raise ValueError(f"unknown --sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


@dataclasses.dataclass(frozen=True)
class Method:
    """A sampler and its step count, resolved once from the flags by `resolve_method` and passed on."""

    name: str
    sampler: Sampler
    steps: int  # network evaluations per sample
    process_respacing: str  # --timestep_respacing of the process it runs on ("": the full process)


def requested_steps(flags, num_timesteps):
    """Network evaluations per sample that the flags ask of --sampler, on a process of `num_timesteps` steps.

    --timestep_respacing has one grammar for every sampler, ADM's (`respace.space_timesteps`: "N",
    "N1,N2,..." or "ddimN"): a fast sampler takes as many steps as ADM's samplers would, on its
    own time grid (--skip_type). Without it the respaced samplers take every step and the fast ones
    FAST_DEFAULT_STEPS.
    """
    respacing = str(flags.get("timestep_respacing") or "").strip()
    if respacing:
        return len(space_timesteps(num_timesteps, respacing))
    return num_timesteps if get_sampler(flags["sampler"]).respaced else FAST_DEFAULT_STEPS


def resolve_method(flags):
    """The `Method` of a sampling command: checks the sampler's name, options and step count."""
    name = flags["sampler"]
    sampler = get_sampler(name)
    check_options(name, flags)
    steps = requested_steps(flags, flags["diffusion_steps"])
    if steps < 1:
        raise ValueError(f"--sampler {name} needs at least 1 step, got {steps}")
    return Method(name, sampler, steps, process_respacing(name, flags))


def process_respacing(name, flags):
    """The --timestep_respacing of the process sampler `name` runs on: its own, or "" (the full process)."""
    return flags["timestep_respacing"] if get_sampler(name).respaced else ""


def steps_flags(name, steps):
    """The sampling flags that ask sampler `name` for `steps` network evaluations."""
    return {"timestep_respacing": f"{get_sampler(name).respacing_prefix}{int(steps)}"}


def check_options(name, flags):
    """Refuse options set for a sampler that does not read them, then the sampler's own checks."""
    sampler = get_sampler(name)
    for option, default in SAMPLER_OPTION_DEFAULTS.items():
        if option not in sampler.options and flags.get(option, default) != default:
            raise ValueError(f"--{option} does not apply to --sampler {name}")
    if sampler.check is not None:
        sampler.check(flags)


def _ddpm(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
    return diffusion.p_sample_loop(
        model, shape, clip_denoised=flags["clip_denoised"], model_kwargs=model_kwargs, device=device,
        noise_source=noise_source,
    )


def _ddim(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
    return diffusion.ddim_sample_loop(
        model, shape, clip_denoised=flags["clip_denoised"], model_kwargs=model_kwargs, device=device,
        eta=flags["eta"], noise_source=noise_source,
    )


def _fast_sampler(solver, solver_options=(), **fixed):
    """A registry `run` for a multistep ODE solver; `solver_options` maps the solver's keywords to flags, and
    `fixed` holds the `fast_samplers.fast_sample` settings the sampler keeps whatever the flags say."""

    def run(model, diffusion, shape, *, model_kwargs, noise_source, device, flags):
        settings = dict(order=flags["solver_order"], skip_type=flags["skip_type"])
        settings.update({keyword: flags[flag] for keyword, flag in solver_options})
        settings.update(fixed)
        return fast_samplers.fast_sample(
            solver, model, diffusion, shape, steps=requested_steps(flags, diffusion.num_timesteps), model_kwargs=model_kwargs,
            noise_source=noise_source, device=device, **settings,
        )

    return run


def _check_fast_sampler(flags):
    if flags["solver_order"] not in (1, 2, 3):
        raise ValueError(f"--solver_order must be 1, 2 or 3, got {flags['solver_order']}")
    if flags["skip_type"] not in SKIP_TYPES:
        raise ValueError(f"unknown --skip_type {flags['skip_type']!r}; expected one of {', '.join(SKIP_TYPES)}")
    if "unipc_variant" in get_sampler(flags["sampler"]).options and flags["unipc_variant"] not in UNIPC_VARIANTS:
        raise ValueError(f"unknown --unipc_variant {flags['unipc_variant']!r}; expected one of {', '.join(UNIPC_VARIANTS)}")


register_sampler(
    "ddpm", _ddpm, options=("clip_denoised",), summary="ADM's ancestral sampler on the --timestep_respacing steps"
)
def _check_ddim(flags):
    # sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) (Song et al. 2021, eq. 16): eta = 1
    # is DDPM's variance, and past it sigma_t^2 can exceed 1 - abar_prev, the variance the step has to give.
    eta = flags["eta"]
    if not (math.isfinite(eta) and 0 <= eta <= 1):
        raise ValueError(f"--eta {eta}: expected a number from 0 (deterministic DDIM) to 1 (DDPM's noise)")


register_sampler(
    "ddim", _ddim, options=("clip_denoised", "eta"), check=_check_ddim, respacing_prefix="ddim",
    summary="DDIM (ADM's --use_ddim True)",
)
_FAST_OPTION_DEFAULTS = dict(solver_order=3, skip_type="logSNR", unipc_variant="bh2")
_FAST_OPTION_HELP = dict(
    solver_order="order of the multistep solver: 1 (DDIM), 2 or 3",
    skip_type=f"time grid of the fast samplers: {', '.join(SKIP_TYPES)} (uniform in log-SNR, in t, in sqrt(t))",
    unipc_variant=f"UniPC's B(h): {', '.join(UNIPC_VARIANTS)}",
)
_FAST_OPTIONS = ("solver_order", "skip_type")
register_sampler(
    "dpm_solver", _fast_sampler(sample_dpm_solver_pp), options=_FAST_OPTIONS,
    option_defaults=_FAST_OPTION_DEFAULTS, check=_check_fast_sampler, respaced=False,
    summary="DPM-Solver++ multistep (data prediction), --solver_order and --skip_type", option_help=_FAST_OPTION_HELP,
)
register_sampler(
    "unipc", _fast_sampler(sample_unipc, (("variant", "unipc_variant"),)), options=_FAST_OPTIONS + ("unipc_variant",),
    option_defaults=_FAST_OPTION_DEFAULTS, check=_check_fast_sampler, respaced=False,
    summary="UniPC multistep (data prediction), --solver_order, --skip_type and --unipc_variant",
)
# The paper's code calls DPM-Solver's and UniPC's released samplers with these fixed settings.
register_sampler(
    "paper_dpm_solver", _fast_sampler(sample_dpm_solver, order=2, skip_type="time_uniform", prediction="eps"),
    respaced=False,
    summary="the paper's --sampler dpm_solver: DPM-Solver-2 multistep, noise form, time-uniform steps",
)
register_sampler(
    "paper_unipc",
    _fast_sampler(sample_unipc, order=3, skip_type="time_uniform", variant="bh1", lower_order_final=LOWER_ORDER_FINAL_ALWAYS),
    respaced=False,
    summary="the paper's --sampler unipc: UniPC-3 bh1, time-uniform steps, lower orders at the end of every run",
)
