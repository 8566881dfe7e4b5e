"""bertforge: pretrain ModernBERT-style encoders from one YAML file."""

__version__ = "0.1.0"
