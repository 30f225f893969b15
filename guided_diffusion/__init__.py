"""debias-adm: ADM-faithful diffusion training with loss-weighting strategies (Yu et al., ECCV 2024)."""

__version__ = "0.1.0"
