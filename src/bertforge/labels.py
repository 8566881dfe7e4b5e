"""The one label value shared by the data and the model."""

IGNORE_INDEX = -100
"""Label of a position that predicts nothing; the value PyTorch's cross-entropy and HuggingFace ignore by default.
The loader writes it, the model's loss and the accuracy metric skip it."""
