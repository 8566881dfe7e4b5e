"""The ModernBERT model: config, packed (unpadded) forward, and HuggingFace import/export.

The names below load on first use, so ``bertforge.model.config`` (and every command that only reads configs)
imports no torch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "ClassifierConfig": "bertforge.model.config",
    "ModernBertConfig": "bertforge.model.config",
    "ModernBertForSequenceClassification": "bertforge.model.classification",
    "load_model_config": "bertforge.model.config",
    "MaskedLMOutput": "bertforge.model.modernbert",
    "ModernBertForMaskedLM": "bertforge.model.modernbert",
    "ModernBertModel": "bertforge.model.modernbert",
    "count_parameters": "bertforge.model.modernbert",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'bertforge.model' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOMES[name]), name)
