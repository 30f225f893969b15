"""ADM's flag set and factories, plus TOML configs; shared by every script."""

import argparse
import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

import torch

from . import gaussian_diffusion as gd
from . import weighting
from .run.checkpoint import load_model_checkpoint
from .run.flag_help import model_and_diffusion_help
from .respace import SpacedDiffusion, space_timesteps
from .targets import mean_type, target_from_flags
from .unet import UNetModel
from .run.command_line import ArgumentParser

# ADM's per-resolution channel multipliers when --channel_mult is empty.
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


# The diffusion flags' defaults, written once: diffusion_defaults() and the keyword defaults of
# ADM's create_model_and_diffusion / create_gaussian_diffusion read them from here.
DIFFUSION_DEFAULTS = dict(
    learn_sigma=False,
    diffusion_steps=1000,
    noise_schedule="linear",
    timestep_respacing="",
    use_kl=False,
    predict_xstart=False,
    predict_v=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    weight_schedule="constant",
    weight_space="target",
)


def diffusion_defaults():
    return dict(DIFFUSION_DEFAULTS, **weighting.parameter_defaults())


def model_and_diffusion_defaults():
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        num_classes=1000,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
    )
    res.update(diffusion_defaults())
    return res


def create_model_and_diffusion(
    image_size,
    class_cond,
    learn_sigma,
    num_channels,
    num_res_blocks,
    channel_mult,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    attention_resolutions,
    dropout,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    use_checkpoint,
    use_scale_shift_norm,
    resblock_updown,
    use_fp16,
    use_new_attention_order,
    num_classes=1000,
    predict_v=DIFFUSION_DEFAULTS["predict_v"],
    weight_schedule=DIFFUSION_DEFAULTS["weight_schedule"],
    weight_space=DIFFUSION_DEFAULTS["weight_space"],
    **schedule_parameters,
):
    model = create_model(
        image_size,
        num_channels,
        num_res_blocks,
        channel_mult=channel_mult,
        learn_sigma=learn_sigma,
        class_cond=class_cond,
        num_classes=num_classes,
        use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        dropout=dropout,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
        use_new_attention_order=use_new_attention_order,
    )
    flags = {key: value for key, value in locals().items() if key not in ("schedule_parameters", "model")}
    diffusion = create_gaussian_diffusion(**diffusion_kwargs({**flags, **schedule_parameters}))
    return model, diffusion


def diffusion_kwargs(flags):
    """create_gaussian_diffusion's arguments from a dict with model_and_diffusion_defaults' keys."""
    defaults = diffusion_defaults()
    kwargs = {key: flags.get(key, default) for key, default in defaults.items() if key != "diffusion_steps"}
    kwargs["steps"] = flags.get("diffusion_steps", defaults["diffusion_steps"])
    return kwargs


def parse_channel_mult(channel_mult, image_size):
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default --channel_mult for --image_size {image_size}; "
                f"give one (e.g. '1,2,2') or use one of {sorted(DEFAULT_CHANNEL_MULT)}"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        try:
            return tuple(float(m) if "." in m else int(m) for m in channel_mult.split(","))
        except ValueError:
            raise ValueError(f"bad --channel_mult {channel_mult!r}: expected comma-separated numbers") from None
    return tuple(channel_mult)


def parse_attention_resolutions(attention_resolutions, image_size):
    """Resolutions (e.g. "32,16,8") to the downsampling rates at which the UNet attends."""
    if isinstance(attention_resolutions, int):
        attention_resolutions = str(attention_resolutions)
    if isinstance(attention_resolutions, str):
        parts = [p for p in attention_resolutions.split(",") if p.strip()]
    else:
        parts = list(attention_resolutions)
    rates = []
    for part in parts:
        try:
            resolution = int(part)
        except ValueError:
            raise ValueError(f"bad --attention_resolutions {attention_resolutions!r}: expected integers") from None
        if resolution < 1 or image_size % resolution:
            raise ValueError(
                f"bad --attention_resolutions: {resolution} does not divide --image_size {image_size}"
            )
        rates.append(image_size // resolution)
    return tuple(rates)


# ADM's normalization() is a 32-group GroupNorm over every level's channels.
GROUP_NORM_GROUPS = 32


def check_model_flags(flags):
    """Refuse model flags from which ADM's UNet cannot be built or would fail on its first batch.

    Called where training and sampling resolve their flags, before they write anything, and
    by create_model for every other caller.
    """
    image_size, num_channels = flags["image_size"], flags["num_channels"]
    dropout = flags.get("dropout", 0.0)
    if not (math.isfinite(dropout) and 0 <= dropout < 1):
        raise ValueError(f"--dropout {dropout}: expected a probability in [0, 1)")
    if image_size < 1:
        raise ValueError(f"--image_size {image_size}: must be positive")
    if num_channels < 1:
        raise ValueError(
            f"--num_channels {num_channels}: must be positive, with every level's channels (num_channels x "
            f"channel_mult) a multiple of {GROUP_NORM_GROUPS} (e.g. ADM's 128)"
        )
    mult = parse_channel_mult(flags["channel_mult"], image_size)
    shown = ",".join(f"{m:g}" for m in mult)
    for level, m in enumerate(mult):
        channels = int(m * num_channels)
        if channels < 1 or channels % GROUP_NORM_GROUPS:
            raise ValueError(
                f"--channel_mult {shown} with --num_channels {num_channels}: level {level} gets {channels} channels; "
                f"every level needs a positive multiple of {GROUP_NORM_GROUPS} (ADM's GroupNorm groups)"
            )
    # Each level after the first halves the image, and the upsampling path must meet the same sizes again.
    factor = 2 ** (len(mult) - 1)
    if image_size % factor:
        deepest = (image_size & -image_size).bit_length()  # 1 + the times 2 divides image_size
        raise ValueError(
            f"--channel_mult {shown} has {len(mult)} levels, too deep for --image_size {image_size}: they halve the "
            f"image {len(mult) - 1} times, so it must be a multiple of {factor}; give at most {deepest} levels"
        )
    resolutions = [image_size // 2**level for level in range(len(mult))]
    rates = parse_attention_resolutions(flags["attention_resolutions"], image_size)
    unreachable = [image_size // rate for rate in rates if image_size // rate not in resolutions]
    if unreachable:
        raise ValueError(
            f"--attention_resolutions {flags['attention_resolutions']}: {', '.join(map(str, unreachable))} "
            f"{'is' if len(unreachable) == 1 else 'are'} not among the resolutions of the UNet of --image_size "
            f"{image_size} --channel_mult {shown} ({', '.join(map(str, resolutions))}), so no attention would be added there"
        )


def check_model_and_diffusion_flags(flags):
    """check_model_flags and the weighting parameters' ranges, of a dict with model_and_diffusion_defaults' keys."""
    check_model_flags(flags)
    weighting.check_parameter_values(flags)


def create_model(
    image_size,
    num_channels,
    num_res_blocks,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    num_classes=1000,
    use_checkpoint=False,
    attention_resolutions="16",
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    dropout=0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
):
    check_model_flags(dict(image_size=image_size, num_channels=num_channels, channel_mult=channel_mult,
                           attention_resolutions=attention_resolutions, dropout=dropout))
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=(3 if not learn_sigma else 6),
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, image_size),
        num_classes=(num_classes if class_cond else None),
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_gaussian_diffusion(
    *,
    steps=DIFFUSION_DEFAULTS["diffusion_steps"],
    learn_sigma=DIFFUSION_DEFAULTS["learn_sigma"],
    sigma_small=False,
    noise_schedule=DIFFUSION_DEFAULTS["noise_schedule"],
    use_kl=DIFFUSION_DEFAULTS["use_kl"],
    predict_xstart=DIFFUSION_DEFAULTS["predict_xstart"],
    predict_v=DIFFUSION_DEFAULTS["predict_v"],
    rescale_timesteps=DIFFUSION_DEFAULTS["rescale_timesteps"],
    rescale_learned_sigmas=DIFFUSION_DEFAULTS["rescale_learned_sigmas"],
    timestep_respacing=DIFFUSION_DEFAULTS["timestep_respacing"],
    weight_schedule=DIFFUSION_DEFAULTS["weight_schedule"],
    weight_space=DIFFUSION_DEFAULTS["weight_space"],
    **schedule_parameters,
):
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=mean_type(target_from_flags(predict_xstart, predict_v)),
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
        loss_weighting=weighting.LossWeighting.from_flags(weight_schedule, weight_space, **schedule_parameters),
    )


def load_model_for_sampling(flags, model_path, device, precision="fp32"):
    """(model, diffusion) of `flags` with the weights at `model_path`, on `device`, in eval mode.

    fp16 on CUDA converts the torso to float16 as ADM does; the other precisions
    run under `fp16_util.autocast_model`.
    """
    fp16_torso = precision == "fp16" and torch.device(device).type == "cuda"
    model, diffusion = create_model_and_diffusion(**{**flags, "use_fp16": fp16_torso})
    load_model_checkpoint(model, model_path)
    model.to(device)
    if fp16_torso:
        model.convert_to_fp16()
    return model.eval(), diffusion


def str2bool(v):
    """argparse type for ADM's `--flag True/False` booleans."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def add_dict_to_argparser(parser, default_dict, help_texts=None):
    """One `--key value` flag per entry, typed like its default; `help_texts` maps keys to --help lines."""
    help_texts = help_texts or {}
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        text = help_texts.get(k)
        parser.add_argument(f"--{k}", default=v, type=v_type, help=f"{text} (default: %(default)r)" if text else None)


def args_to_dict(args, keys):
    return {k: getattr(args, k) for k in keys}


def _coerce(key, value, default):
    """Give a config value the type of the flag's default, as argparse would."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(default, str) and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ValueError(f"config key {key!r} must be a {type(default).__name__}, got {value!r}")
    return value


# Tables a config may hold. Each script reads some: training reads model, diffusion
# and train; sampling reads model, diffusion and sample; so one file per dataset serves both.
CONFIG_SECTIONS = ("model", "diffusion", "train", "sample")


def load_config(path, defaults, sections=None):
    """Read a TOML config of flag values.

    Top-level keys and the keys of the tables named in `sections` (every table
    when None) must be keys of `defaults` and take their types; tables of
    CONFIG_SECTIONS not in `sections` belong to other scripts and are skipped.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"--config {path}: is a directory; expected a TOML file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {path}: not valid TOML ({e})") from None
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in CONFIG_SECTIONS:
                raise ValueError(f"--config {path}: unknown table [{key}]; expected {', '.join(CONFIG_SECTIONS)}")
            if sections is not None and key not in sections:
                continue
            entries = value.items()
        else:
            entries = [(key, value)]
        for k, v in entries:
            if k in flat:
                raise ValueError(f"--config {path}: key {k!r} is given twice")
            flat[k] = v
    unknown = sorted(set(flat) - set(defaults))
    if unknown:
        raise ValueError(f"--config {path}: unknown key(s) {', '.join(unknown)}")
    return {k: _coerce(k, v, defaults[k]) for k, v in flat.items()}


def parse_args_with_config(parser, defaults, argv, sections=None):
    """Parse `argv` where `--config FILE` supplies defaults and explicit flags override the file."""
    return _parse_with_config(parser, defaults, argv, sections)[0]


def parse_flags_and_given(parser, defaults, argv, sections=None):
    """(flags, given): the flags of `argv` as a dict over `defaults`' keys (`--config FILE` first, then
    the flags given), and the names of those set on the command line or in the config, even to
    their default value."""
    args, config_values = _parse_with_config(parser, defaults, argv, sections)
    return {k: getattr(args, k) for k in defaults}, set(config_values) | named_on_command_line(defaults, argv)


def named_on_command_line(defaults, argv):
    """The keys of `defaults` that `argv` sets, however spelled (`--key v`, `--key=v`, an abbreviation)."""
    probe = ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    probe.add_argument("--config")
    for key in defaults:
        probe.add_argument(f"--{key}")
    known, _ = probe.parse_known_args(argv)
    return set(vars(known)) - {"config"}


def _parse_with_config(parser, defaults, argv, sections):
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    config_values = load_config(known.config, defaults, sections) if known.config else {}
    if config_values:
        parser.set_defaults(**config_values)
    return parser.parse_args(argv), config_values


def create_argparser(defaults, description=None, help_texts=None):
    """An ADM-style parser: one `--key value` flag per default, plus `--config`.

    `help_texts` are the --help lines; by default those of the model and diffusion flags.
    """
    if help_texts is None:
        help_texts = model_and_diffusion_help()
    parser = ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="TOML file of flag values; flags given here override it")
    add_dict_to_argparser(parser, defaults, help_texts)
    return parser
