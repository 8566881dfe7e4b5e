"""Errors the CLI reports as one line, kept free of torch imports so that it can name them in its error handling
without loading torch before a subcommand starts (``bertforge train`` must install its signal handlers first; see
``bertforge.train.signals``)."""


class ConfigError(ValueError):
    """A problem in a config, a command's arguments or a folder that the user can fix; the message says where and
    how."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, fails verification, or holds more than data; the message names
    the file and what is wrong."""


class TrainingDiverged(RuntimeError):
    """A run stopped by its divergence guard; the message names the step, the tokens and what was seen."""


class DataError(ValueError):
    """Prepared data, or a prep's input or worker, that is broken: the message names the file or unit and the fix."""


class StoppedBySignal(Exception):
    """A run stopped early, on purpose, after saving a checkpoint it resumes from (the CLI exits 75: requeue)."""
