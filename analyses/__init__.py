"""The paper's analyses (Figures 1-5, 7, 10 and a colour-shift measure) as library calls.

One module per analysis: `schedules` (SNR, amplification and loss-weight
curves), `one_step` (one-step x0 estimates), `mse_step` (per-timestep noise
MSE), `fid_curves` (FID from the results registry), `few_step` (samples over
the number of sampling steps) and `color_shift` (per-channel statistics of
samples against the training set). Each writes a PNG and the CSV of the
numbers behind it; `scripts/analysis/` holds their command lines.
"""
