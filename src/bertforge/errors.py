"""Errors about a checkpoint's contents, kept free of torch imports so that the CLI can name them in its error
handling without loading torch before a subcommand starts (``bertforge train`` must install its signal handlers
first; see ``bertforge.train.signals``)."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensors and the shapes."""
