"""Read and write the HuggingFace ModernBERT format (config.json + safetensors): configs converted both ways, state
dicts read, checked against a model and saved. The model classes build themselves from what this module reads
(``from_pretrained``), so it imports none of them.

Our module names equal transformers', so weights map key for key; the only differences are that the tied
decoder weight is not stored and layer 0 has no attn_norm. A directory we write loads in
``transformers.AutoModelForMaskedLM`` (or ``AutoModelForSequenceClassification``, for a fine-tuned classifier)
with no missing or unexpected keys, and one transformers wrote loads here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bertforge.atomic import atomic_path, write_text_atomic
from bertforge.errors import CheckpointError
from bertforge.model.config import ClassifierConfig, ModernBertConfig

TIED_KEY = "decoder.weight"

# HF config keys our architecture fixes: a checkpoint that sets them otherwise is a different model.
_FIXED = {"norm_bias": False, "attention_bias": False, "mlp_bias": False, "classifier_bias": False,
          "decoder_bias": True, "hidden_activation": "gelu", "classifier_activation": "gelu",
          "tie_word_embeddings": True}

# transformers' own defaults, used when a config.json leaves a key out, so we read what transformers would.
_HF_DEFAULTS = {"vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
                "num_attention_heads": 12, "max_position_embeddings": 8192, "initializer_range": 0.02,
                "initializer_cutoff_factor": 2.0, "norm_eps": 1e-5, "pad_token_id": 50283, "cls_token_id": 50281,
                "sep_token_id": 50282, "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
                "local_attention": 128, "global_attn_every_n_layers": 3, "attention_dropout": 0.0,
                "embedding_dropout": 0.0, "mlp_dropout": 0.0}


def to_hf_config(config: ModernBertConfig, classifier: ClassifierConfig | None = None) -> dict[str, Any]:
    head = {} if classifier is None else {
        "architectures": ["ModernBertForSequenceClassification"],
        "id2label": dict(enumerate(classifier.labels)),
        "label2id": {name: i for i, name in enumerate(classifier.labels)},
        "problem_type": classifier.problem_type,
        "classifier_pooling": classifier.pooling,
        "classifier_dropout": classifier.dropout,
    }
    return {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "global_rope_theta": config.global_rope_theta,
        "local_rope_theta": config.local_rope_theta,
        "local_attention": config.local_attention,
        "global_attn_every_n_layers": config.global_attn_every_n_layers,
        "norm_eps": config.norm_eps,
        "initializer_range": config.init_std,
        "initializer_cutoff_factor": config.init_cutoff,
        "embedding_dropout": config.embedding_dropout,
        "attention_dropout": config.attention_dropout,
        "mlp_dropout": config.mlp_dropout,
        "pad_token_id": config.pad_token_id,
        "cls_token_id": config.cls_token_id,
        "sep_token_id": config.sep_token_id,
        "bos_token_id": config.cls_token_id,
        "eos_token_id": config.sep_token_id,
        "mask_token_id": config.mask_token_id,
        "classifier_pooling": "mean",
        "torch_dtype": "float32",
        **_FIXED,
        **head,
    }


def from_hf_config(hf: dict[str, Any], *, source: str = "config.json", **overrides: Any) -> ModernBertConfig:
    if hf.get("model_type") != "modernbert":
        raise CheckpointError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'modernbert'")
    for key, expected in _FIXED.items():
        if key in hf and hf[key] != expected:
            raise CheckpointError(f"{source}: '{key}' is {hf[key]!r}; bertforge's ModernBERT supports only "
                                  f"{expected!r}")
    get = {**_HF_DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}.__getitem__
    # transformers' config has no mask id; the released tokenizer puts [MASK] right after [PAD].
    mask_id = hf.get("mask_token_id")
    if mask_id is None:
        mask_id = get("pad_token_id") + 1 if get("pad_token_id") + 1 < get("vocab_size") else 0
    fields = dict(
        vocab_size=get("vocab_size"), hidden_size=get("hidden_size"), intermediate_size=get("intermediate_size"),
        num_hidden_layers=get("num_hidden_layers"), num_attention_heads=get("num_attention_heads"),
        max_position_embeddings=get("max_position_embeddings"), global_rope_theta=float(get("global_rope_theta")),
        local_rope_theta=float(get("local_rope_theta")), local_attention=get("local_attention"),
        global_attn_every_n_layers=get("global_attn_every_n_layers"), norm_eps=get("norm_eps"),
        init_std=get("initializer_range"), embedding_dropout=get("embedding_dropout"),
        attention_dropout=get("attention_dropout"), attention_output_dropout=get("attention_dropout"),
        mlp_dropout=get("mlp_dropout"), pad_token_id=get("pad_token_id"), cls_token_id=get("cls_token_id"),
        sep_token_id=get("sep_token_id"), mask_token_id=mask_id)
    fields.update(overrides)
    return ModernBertConfig(**fields)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Single or sharded safetensors, or a legacy pytorch_model.bin."""
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(path / shard))
        return state
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
    raise CheckpointError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin "
                          f"(found: {found})")


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load with every mismatch reported at once by tensor name, instead of torch's first-error message."""
    expected = model.state_dict()
    state = dict(state)
    if TIED_KEY in state:
        emb = state.get("model.embeddings.tok_embeddings.weight")
        if emb is not None and not torch.equal(state[TIED_KEY], emb):
            raise CheckpointError(f"{source}: '{TIED_KEY}' differs from the token embedding, but ModernBERT ties them")
        del state[TIED_KEY]
    problems = []
    missing = sorted(set(expected) - set(state) - {TIED_KEY})
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    for key in sorted(set(expected) & set(state)):
        if expected[key].shape != state[key].shape:
            problems.append(f"'{key}' has shape {tuple(state[key].shape)}, the model expects "
                            f"{tuple(expected[key].shape)}")
    if problems:
        raise CheckpointError(f"{source} does not fit this ModernBertConfig ({model.config.num_hidden_layers} layers, "
                              f"hidden {model.config.hidden_size}, vocab {model.config.vocab_size}):\n  "
                              + "\n  ".join(problems))
    model.load_state_dict(state, strict=False)


def read_hf_config(path: Path) -> dict[str, Any]:
    """A HuggingFace directory's config.json, with the [MASK] id from its tokenizer when the config has none."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a HuggingFace ModernBERT directory")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err}); export the model again or restore the "
                              f"file") from None
    tokenizer_file = path / "tokenizer.json"
    if "mask_token_id" not in hf and tokenizer_file.is_file():
        added = json.loads(tokenizer_file.read_text()).get("added_tokens", [])
        hf["mask_token_id"] = next((t["id"] for t in added if t["content"] == "[MASK]"), None)
    return hf


def read_pretrained(path: Path, **overrides: Any) -> tuple[ModernBertConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """A HuggingFace ModernBERT directory's architecture (``overrides`` set fields), its raw config.json and its
    weights."""
    hf = read_hf_config(path)
    return from_hf_config(hf, source=str(path / "config.json"), **overrides), hf, read_state_dict(path)


def stored_classifier(hf: dict[str, Any]) -> ClassifierConfig | None:
    """The classification head a config.json describes (transformers' keys), if it is a classifier's."""
    if "ModernBertForSequenceClassification" not in (hf.get("architectures") or []):
        return None
    id2label = {int(i): name for i, name in (hf.get("id2label") or {}).items()}
    labels = [id2label[i] for i in sorted(id2label)] or [f"LABEL_{i}" for i in range(hf.get("num_labels", 2))]
    problem = hf.get("problem_type") or ("regression" if len(labels) == 1 else "single_label_classification")
    return ClassifierConfig(labels=labels, problem_type=problem, pooling=hf.get("classifier_pooling", "cls"),
                            dropout=hf.get("classifier_dropout", 0.0))


def save_pretrained(model: torch.nn.Module, path: str | Path) -> None:
    """A masked LM or a classifier (``classifier_config``) as a HuggingFace directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k != TIED_KEY}
    with atomic_path(path / "model.safetensors") as tmp:
        save_file(state, tmp, metadata={"format": "pt"})
    hf = to_hf_config(model.config, getattr(model, "classifier_config", None))
    write_text_atomic(path / "config.json", json.dumps(hf, indent=2) + "\n")
