"""Tokenizers: load any HuggingFace tokenizer, or train a byte-level BPE with ModernBERT's special tokens."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bertforge.errors import CheckpointError, DataError

SPECIAL_TOKENS = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    pad: int
    mask: int

    def as_set(self) -> set[int]:
        return {self.cls, self.sep, self.pad, self.mask}


MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
"""What a ModernBERT takes, as the released tokenizer lists it: no ``token_type_ids``, which transformers'
``ModernBertModel.forward`` (and so ``AutoModel`` and sentence-transformers) refuses."""


def read_tokenizer_json(path: Path) -> dict:
    """A tokenizer folder's JSON file (tokenizer.json, tokenizer_config.json), or one line naming it when it is
    empty or cut off (a copy or a save that did not finish), instead of the tokenizers library's parse error."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        what = "is empty" if path.stat().st_size == 0 else f"does not parse as JSON ({err})"
        raise DataError(f"{path} {what}: the tokenizer is damaged; train it again (`bertforge tokenizer train`) or "
                        f"copy it back whole") from None


def _check_local_tokenizer(name_or_path: str) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (Path(name_or_path) / name).is_file():
            read_tokenizer_json(Path(name_or_path) / name)


def load_tokenizer(name_or_path: str, **settings):
    """A HuggingFace tokenizer; ``settings`` (``model_max_length``...) replace what its configuration says."""
    from transformers import AutoTokenizer  # noqa: PLC0415 (transformers loads torch; prep and plan stay torch-free)

    _check_local_tokenizer(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, **settings)
    except OSError as err:
        where = "" if Path(name_or_path).exists() else "no folder of that name here, and "
        raise FileNotFoundError(f"cannot load tokenizer '{name_or_path}': {where}from transformers: \""
                                f"{' '.join(str(err).split())}\" Give a folder that `bertforge tokenizer train` or "
                                f"save_pretrained wrote, or a HuggingFace Hub name such as "
                                f"answerdotai/ModernBERT-base") from None


def save_model_tokenizer(name_or_path: str, out_dir: str | Path, *, vocab_size: int, specials: SpecialIds,
                         max_positions: int, max_length: int | None = None) -> None:
    """Save the tokenizer beside a model so that libraries use it as they use the released ModernBERT's: inputs
    ``input_ids`` and ``attention_mask`` only, ``model_max_length`` the model's trained context (``max_length``;
    default: the tokenizer's own, at most ``max_positions``), and its special ids those of the model's config. A tokenizer with ids past the model's vocabulary, or other special ids, is
    refused (the first would fail in the embedding, the second mask and frame with the wrong tokens)."""
    tokenizer = load_tokenizer(name_or_path, model_input_names=MODEL_INPUT_NAMES)
    tokenizer.model_max_length = tokenizer.init_kwargs["model_max_length"] = min(
        max_length or tokenizer.model_max_length, max_positions)
    if len(tokenizer) > vocab_size:
        raise CheckpointError(f"tokenizer '{name_or_path}' has {len(tokenizer):,} tokens, more than the model's "
                              f"vocabulary ({vocab_size:,}): its ids past {vocab_size - 1} have no embedding; export "
                              f"with the tokenizer the model was trained with")
    ids = special_ids(tokenizer)
    if ids != specials:
        raise CheckpointError(f"tokenizer '{name_or_path}' has special ids {ids}, the model's config {specials}: "
                              f"it is not the tokenizer the model was trained with")
    tokenizer.save_pretrained(out_dir)


def tokenizer_size_and_specials(name_or_path: str) -> tuple[int, SpecialIds]:
    """The tokenizer's size (with added tokens) and special ids, as ``len(load_tokenizer(x))`` and
    ``special_ids(load_tokenizer(x))`` give them.

    A local directory saved by ``save_pretrained`` is read with ``tokenizers`` and its JSON config alone, because
    importing ``transformers`` imports torch (seconds), and run checks (``bertforge slurm``, the preflight) should
    not wait for it; other tokenizers (a hub name) go through ``transformers``.
    """
    path = Path(name_or_path)
    if not ((path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()):
        tokenizer = load_tokenizer(name_or_path)
        return len(tokenizer), special_ids(tokenizer)

    fast = Tokenizer.from_str(json.dumps(read_tokenizer_json(path / "tokenizer.json")))
    settings = read_tokenizer_json(path / "tokenizer_config.json")

    def token_id(name: str) -> int | None:
        token = settings.get(f"{name}_token")
        token = token.get("content") if isinstance(token, dict) else token
        return fast.token_to_id(token) if token else None

    return fast.get_vocab_size(with_added_tokens=True), _collect_special_ids(token_id, name_or_path)


def special_ids(tokenizer) -> SpecialIds:
    return _collect_special_ids(lambda name: getattr(tokenizer, f"{name}_token_id"), tokenizer.name_or_path)


def _collect_special_ids(token_id: Callable[[str], int | None], source: str) -> SpecialIds:
    ids = {}
    for name in ("cls", "sep", "pad", "mask"):
        ids[name] = token_id(name)
        if ids[name] is None:
            raise ValueError(f"tokenizer {source!r} has no {name} token; bertforge frames documents as "
                             f"[CLS] ... [SEP] and masks with [MASK]")
    return SpecialIds(**ids)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Byte-level BPE, specials first (ids 0..4), vocabulary padded to a multiple of 64 with unused tokens."""
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 (transformers loads torch; prep and plan stay torch-free)

    if vocab_size < 300:
        raise ValueError(f"--vocab-size must be at least 300 (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    padding = -tok.get_vocab_size() % 64
    tok.add_special_tokens([f"[unused{i}]" for i in range(padding)])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   mask_token="[MASK]", unk_token="[UNK]", model_max_length=8192,
                                   model_input_names=MODEL_INPUT_NAMES)
    out_dir = Path(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir
