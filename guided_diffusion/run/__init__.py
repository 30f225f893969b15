"""Run machinery: checkpoints and manifests, atomic writes, locks, jobs, preemption, retention,
device health, the sample store, fast paths and flag help. The science is one level up."""
