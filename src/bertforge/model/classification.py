"""ModernBERT with a sequence-classification (or regression) head, on the same unpadded token stream.

The modules and their names are transformers' ``ModernBertForSequenceClassification``'s (``model``, ``head``,
``drop``, ``classifier``), so the encoder and the pretrained MLM head (``head.dense``, ``head.norm``) carry over
from a masked-LM checkpoint, and a fine-tuned model saves to a directory transformers loads with equal logits.
Sequences are pooled per ``cu_seqlens`` segment: no padding is ever computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.errors import CheckpointError
from bertforge.model.config import ClassifierConfig, ModernBertConfig
from bertforge.model.hf_io import load_state_dict_checked, read_pretrained, save_pretrained, stored_classifier
from bertforge.model.init import init_weights, trunc_normal
from bertforge.model.layers import PredictionHead
from bertforge.model.modernbert import ModernBertModel, unpad


@dataclass
class SequenceClassifierOutput:
    loss: torch.Tensor | None
    """Cross-entropy, BCE or MSE by ``problem_type``; None without labels."""
    logits: torch.Tensor
    """(sequences, num_labels)."""


def pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor, how: str) -> torch.Tensor:
    """(tokens, hidden) packed states -> (sequences, hidden): each sequence's first token, or its mean."""
    starts = cu_seqlens[:-1].long()
    if how == "cls":
        return hidden[starts]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    sums = hidden.new_zeros(len(lengths), hidden.shape[-1]).index_add_(0, segment, hidden)
    return sums / lengths.clamp(min=1).unsqueeze(-1).to(hidden.dtype)


class ModernBertForSequenceClassification(nn.Module):
    def __init__(self, config: ModernBertConfig, classifier: ClassifierConfig, *, init: bool = True):
        super().__init__()
        self.config = config
        self.classifier_config = classifier
        self.model = ModernBertModel(config)
        self.head = PredictionHead(config)
        self.drop = nn.Dropout(classifier.dropout)
        self.classifier = nn.Linear(config.hidden_size, classifier.num_labels)
        if init:
            init_weights(self, config)
            self.reset_classifier()

    def reset_classifier(self) -> None:
        """A fresh classifier, initialised as transformers does (std 1/sqrt(hidden), zero bias)."""
        trunc_normal(self.classifier.weight, 1.0 / math.sqrt(self.config.hidden_size), self.config.init_cutoff)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None) -> SequenceClassifierOutput:
        """Packed (``cu_seqlens`` given, 1-D ids) or HuggingFace-style padded (B, L) with ``attention_mask``."""
        if cu_seqlens is None:
            input_ids, cu_seqlens, max_seqlen = unpad(input_ids, attention_mask)
        hidden = self.model(input_ids, cu_seqlens, max_seqlen)
        pooled = pool(hidden, cu_seqlens, self.classifier_config.pooling)
        logits = self.classifier(self.drop(self.head(pooled)))
        return SequenceClassifierOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits)

    @classmethod
    def from_pretrained(cls, path, classifier: ClassifierConfig | None = None,
                        **overrides) -> ModernBertForSequenceClassification:
        """A HuggingFace directory: a fine-tuned classifier as saved, or a masked LM with a fresh classifier for
        ``classifier``'s labels (the encoder and MLM head carry over, the decoder is dropped). A fine-tuned
        classifier's own head is kept when ``classifier`` is None or has its labels."""
        config, hf, state = read_pretrained(Path(path), **overrides)
        stored = stored_classifier(hf)
        if classifier is None and stored is None:
            raise CheckpointError(f"{path} holds no sequence classifier; name the task's labels to start one")
        keep_head = stored is not None and (classifier is None or classifier.labels == stored.labels)
        return cls.from_state(config, stored if keep_head else classifier, state, source=str(path),
                              keep_classifier=keep_head)

    @classmethod
    def from_state(cls, config: ModernBertConfig, classifier: ClassifierConfig, state: dict[str, torch.Tensor],
                   *, source: str, keep_classifier: bool = False) -> ModernBertForSequenceClassification:
        """A classifier whose encoder and head come from ``state`` (a masked-LM's or a classifier's weights); its
        classifier comes from ``state`` too when ``keep_classifier``, else starts fresh. The MLM decoder is
        dropped."""
        model = cls(config, classifier, init=not keep_classifier)
        weights = {k: v for k, v in state.items() if k.startswith(("model.", "head."))}
        own = model.state_dict()
        weights.update({k: (state if keep_classifier and k in state else own)[k] for k in own
                        if k.startswith("classifier.")})
        load_state_dict_checked(model, weights, source=source)
        return model

    def save_pretrained(self, path) -> None:
        """Write a directory ``transformers.AutoModelForSequenceClassification`` loads with equal logits."""
        save_pretrained(self, path)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.classifier_config.problem_type
        if kind == "regression":
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        if kind == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels.long())
