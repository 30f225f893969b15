"""Building the model and diffusion of analysed checkpoints and loading their weights."""

from guided_diffusion.script_util import (
    create_gaussian_diffusion,
    diffusion_kwargs,
    load_model_for_sampling,
    model_and_diffusion_defaults,
)


def model_settings(args):
    """The model and diffusion flags of parsed arguments, as create_model_and_diffusion's keywords."""
    settings = {key: getattr(args, key) for key in model_and_diffusion_defaults()}
    if settings["class_cond"]:
        raise ValueError("--class_cond True: the analyses take unconditional models only")
    return settings


def load_model(path, settings, device):
    """The UNet described by `settings` with the weights at `path`, on `device`, in eval mode."""
    precision = "fp16" if settings["use_fp16"] else "fp32"
    return load_model_for_sampling(settings, path, device, precision)[0]


def make_diffusion(settings, timestep_respacing=""):
    """The diffusion of `settings` over the given respacing ("" is every training step)."""
    return create_gaussian_diffusion(**{**diffusion_kwargs(settings), "timestep_respacing": timestep_respacing})


def iter_models(specs, settings, device):
    """(name, model) for each (name, path) of `specs`, loaded one at a time as the caller advances."""
    for name, path in specs:
        yield name, load_model(path, settings, device)
