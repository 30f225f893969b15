"""Fast ODE solvers: DPM-Solver++ and UniPC on the continuous-time noise schedule, and their
registration as samplers (`fast_samplers`)."""
