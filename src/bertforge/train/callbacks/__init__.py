"""Composer callbacks of a training run, one per file: LR from the token clock, the divergence guard, the loader
state and lineage in checkpoints, metrics and curves, held-out eval, stopping on a signal, verified checkpoints,
and the gloo gradient fix for FSDP2 on CPU."""
