"""Fine-tuning on downstream tasks (GLUE and tasks a YAML file describes): data, metrics, the training loop, and
the suite of tasks x seeds with its results table. Imports model/, data/ and train/ (never the other way)."""

from functools import partial

say = partial(print, flush=True)
"""Progress lines, flushed at once so they show under nohup, pipes and Slurm logs."""
