"""Composer callbacks of a training run, one per file: LR from the token clock, the loader state in checkpoints,
metrics and curves, and stopping on a signal."""
