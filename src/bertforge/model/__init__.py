"""The ModernBERT model: config, packed (unpadded) forward, and HuggingFace import/export."""

from bertforge.model.config import ModernBertConfig, load_model_config
from bertforge.model.modernbert import IGNORE_INDEX, MaskedLMOutput, ModernBertForMaskedLM, ModernBertModel, count_parameters

__all__ = ["IGNORE_INDEX", "MaskedLMOutput", "ModernBertConfig", "ModernBertForMaskedLM", "ModernBertModel",
           "count_parameters", "load_model_config"]
