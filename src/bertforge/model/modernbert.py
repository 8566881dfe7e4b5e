"""ModernBERT encoder and its masked-language-model head, run on an unpadded token stream."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.labels import IGNORE_INDEX
from bertforge.model.config import ModernBertConfig
from bertforge.model.hf_io import load_state_dict_checked, read_pretrained, save_pretrained
from bertforge.model.init import init_weights
from bertforge.model.layers import Embeddings, EncoderLayer, PredictionHead, layer_norm
from bertforge.model.layout import make_layout
from bertforge.model.mlm_loss import chunked_mlm_loss


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None
    """Mean cross-entropy over positions whose label is not -100; None without labels."""
    logits: torch.Tensor | None
    """Padded input: (batch, length, vocab), zeros at padding. Packed input: (tokens, vocab), or with labels
    only the (predicted positions, vocab) rows, in stream order (sparse prediction)."""
    num_predictions: int | torch.Tensor | None = None
    """How many positions the loss averages over."""
    predictions: torch.Tensor | None = None
    """With ``mlm_loss_chunk`` set (training, packed, with labels): the top prediction of each predicted position,
    in stream order, and ``logits`` is None."""

    padding: torch.Tensor | None = None
    """With a ``prediction_index``: True at the rows of ``logits``/``predictions`` that pad it to its bucket."""

    def predicted_ids(self) -> torch.Tensor:
        """The top prediction of each predicted position (from ``logits``, or the fused loss's own), in stream
        order, padding rows left out."""
        ids = self.predictions if self.predictions is not None else self.logits.argmax(-1)
        return ids if self.padding is None else ids[~self.padding]


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Padded (B, L) ids and mask -> the packed stream: flat ids, cu_seqlens, longest length."""
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    lengths = mask.sum(dim=1, dtype=torch.int32)
    return input_ids[mask], F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0)), int(lengths.max())


class ModernBertModel(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = layer_norm(config)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | None = None,
                row_offsets: torch.Tensor | None = None, row_len: int | None = None) -> torch.Tensor:
        """(tokens,) ids packed by ``cu_seqlens`` -> (tokens, hidden) final hidden states. ``row_offsets`` and
        ``row_len``: the packed rows the sequences were laid in, which a compiled SDPA path attends over."""
        layout = make_layout(cu_seqlens, input_ids.shape[0], self.config.head_dim, max_seqlen, row_offsets, row_len)
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, layout)
        return self.final_norm(x)


class ModernBertForMaskedLM(nn.Module):
    """A plain ``nn.Module``; the decoder weight is the token embedding (tied), as in ModernBERT."""

    def __init__(self, config: ModernBertConfig, *, init: bool = True):
        super().__init__()
        self.config = config
        self.model = ModernBertModel(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight
        if init:
            init_weights(self, config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, prediction_index: torch.Tensor | None = None,
                row_offsets: torch.Tensor | None = None, row_len: int | None = None) -> MaskedLMOutput:
        """Packed when ``cu_seqlens`` is given (the training path), else HuggingFace-style padded (B, L).

        The training loader also passes what it knows of the batch so that a compiled forward needs no value
        read back from the device: ``prediction_index`` (the positions that carry a label, padded with -1 to a
        multiple of 128) and the packed rows (``row_offsets``, ``row_len``)."""
        if cu_seqlens is not None:
            if input_ids.dim() != 1:
                raise ValueError(f"packed input_ids must be 1-D (tokens,), got shape {tuple(input_ids.shape)}")
            hidden = self.model(input_ids, cu_seqlens, max_seqlen, row_offsets, row_len)
            return self._predict_packed(hidden, labels, prediction_index)
        return self._forward_padded(input_ids, attention_mask, labels)

    def _predict_packed(self, hidden, labels, prediction_index) -> MaskedLMOutput:
        if labels is None:
            return MaskedLMOutput(loss=None, logits=self.decoder(self.head(hidden)))
        # Sparse prediction: only the ~30% of positions that carry a label pay for the head and the vocab matmul.
        if prediction_index is None:
            keep = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # a data-dependent size: eager use only
            padding = None
        else:
            padding = prediction_index < 0
            keep = prediction_index.clamp(min=0)
        targets = labels.index_select(0, keep)
        if padding is not None:
            targets = targets.masked_fill(padding, IGNORE_INDEX)
        rows = self.head(hidden.index_select(0, keep))
        if self.config.mlm_loss_chunk:
            loss, predictions = chunked_mlm_loss(rows, self.decoder, targets, self.config.mlm_loss_chunk)
            logits = None
        else:
            logits = self.decoder(rows)
            loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum") \
                / (targets != IGNORE_INDEX).sum().clamp(min=1)
            predictions = None
        return MaskedLMOutput(loss=loss, logits=logits, num_predictions=targets.shape[0] if padding is None else
                              (~padding).sum(), predictions=predictions, padding=padding)

    def _forward_padded(self, input_ids, attention_mask, labels) -> MaskedLMOutput:
        batch, length = input_ids.shape
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        hidden = self.model(*unpad(input_ids, mask))
        flat_logits = self.decoder(self.head(hidden))
        logits = flat_logits.new_zeros(batch, length, flat_logits.shape[-1])
        logits[mask] = flat_logits
        loss, count = None, None
        if labels is not None:
            keep = labels.masked_fill(~mask, IGNORE_INDEX) != IGNORE_INDEX
            count = int(keep.sum())
            loss = F.cross_entropy(logits[keep].float(), labels[keep]) if count else logits.sum() * 0.0
        return MaskedLMOutput(loss=loss, logits=logits, num_predictions=count)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "ModernBertForMaskedLM":
        """Load a HuggingFace ModernBERT directory (ours or transformers'); overrides set config fields."""
        config, _, state = read_pretrained(Path(path), **overrides)
        model = cls(config, init=False)
        load_state_dict_checked(model, state, source=str(path))
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write a directory ``transformers.AutoModelForMaskedLM.from_pretrained`` loads with no key warnings."""
        save_pretrained(self, path)


DYNAMIC_INPUTS = ("input_ids", "labels", "cu_seqlens", "prediction_index")
"""The packed forward's inputs whose size changes from batch to batch (tokens, documents, prediction buckets)."""


def mark_dynamic_sizes(inputs: dict) -> dict:
    """Tell ``torch.compile`` up front that these sizes vary, so the first batch compiles a graph for any size
    instead of one specialised to its own and recompiled at the next (docs/model.md, "Compiling")."""
    for key in DYNAMIC_INPUTS:
        if isinstance(inputs.get(key), torch.Tensor):
            torch._dynamo.maybe_mark_dynamic(inputs[key], 0)
    return inputs


def count_parameters(model: nn.Module) -> int:
    """Unique parameters, so the tied decoder weight is counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
