"""Reading a checkpoint into a model: ours (a monolithic .pt, or an FSDP2 sharded directory), the ModernBERT research
repository's (research.py), or a HuggingFace directory, with what is known of the tokenizer it was trained with.

finetune/, eval/, export/ and `bertforge average` read checkpoints only through here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bertforge.checkpoint.manifest import manifest_path, verify_checkpoint
from bertforge.checkpoint.research import is_research_layout, read_research_checkpoint
from bertforge.checkpoint.run_folder import read_checkpoint_state
from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.errors import CheckpointError
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked


def load_checkpoint_model(path: str | Path, model_config: ModernBertConfig | None = None) -> ModernBertForMaskedLM:
    """The model of a checkpoint; ``model_config`` gives the architecture of a research checkpoint that stores
    none."""
    return read_checkpoint(Path(path), model_config)[0]


def load_masked_lm(path: str | Path) -> ModernBertForMaskedLM:
    """A HuggingFace ModernBERT directory (ours or transformers'), or a checkpoint (ours or the research
    repository's), as our masked LM."""
    return read_model(path)[0]


def read_model(path: str | Path, verified: bool = False, model_config: ModernBertConfig | None = None
               ) -> tuple[ModernBertForMaskedLM, dict]:
    """``load_masked_lm``'s model, with what is known of its tokenizer: ``tokenizer`` (a name or directory, found
    and checked by ``recorded_tokenizer``), ``tokenizer_fingerprint`` and ``max_length`` (the context it was
    trained at), each None when unknown; ``verified`` and ``model_config`` as for ``read_checkpoint``."""
    path = Path(path)
    if (path / "config.json").is_file():
        has_tokenizer = (path / "tokenizer.json").is_file()
        return ModernBertForMaskedLM.from_pretrained(path), {
            "tokenizer": str(path) if has_tokenizer else None,
            "tokenizer_fingerprint": tokenizer_fingerprint(str(path)) if has_tokenizer else None, "max_length": None}
    model, run_state = read_checkpoint(path, model_config, verified=verified)
    return model, {"tokenizer": recorded_tokenizer(run_state, path), "tokenizer_fingerprint": run_state.get(
        "tokenizer_fingerprint"), "max_length": trained_length(path.parent / "config.yaml")}


def recorded_tokenizer(run_state: dict, checkpoint: Path) -> str | None:
    """The tokenizer a checkpoint's run trained with, where it can be found now: its recorded path (absolute since
    runs record it so; an older run's relative path is tried from here and from the run folder's parent), kept only
    when its fingerprint is the recorded one. None when no copy is found (the caller asks for --tokenizer); a
    tokenizer found under that name with other ids is refused rather than used in its place."""
    recorded, fingerprint = run_state.get("tokenizer"), run_state.get("tokenizer_fingerprint")
    if not recorded:
        return None
    candidates = [Path(recorded)] if Path(recorded).is_absolute() else [Path(recorded),
                                                                        checkpoint.parent.parent / recorded]
    found = [c for c in candidates if (c / "tokenizer.json").is_file()]
    if not found:
        return None
    if fingerprint is None:
        return str(found[0])
    for candidate in found:
        if tokenizer_fingerprint(str(candidate)) == fingerprint:
            return str(candidate)
    raise CheckpointError(f"{checkpoint} was trained with tokenizer '{recorded}' (fingerprint {fingerprint}), but "
                          f"'{found[0]}' is another tokenizer (fingerprint {tokenizer_fingerprint(str(found[0]))}); "
                          f"pass --tokenizer with the run's own tokenizer")


def read_checkpoint(path: Path, model_config: ModernBertConfig | None = None,
                    verified: bool = False) -> tuple[ModernBertForMaskedLM, dict]:
    """The model and our RunState record ({} for a research checkpoint). A checkpoint with a manifest beside it is
    verified first, unless the caller has (``verified``): hashing a large checkpoint twice costs minutes."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if not verified and manifest_path(path).is_file() and (problem := verify_checkpoint(path)) is not None:
        raise CheckpointError(f"{path}: {problem}; export another checkpoint (`bertforge export RUN_DIR OUT --all` "
                              f"exports each one that verifies)")
    state = read_checkpoint_state(path)
    run_state = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("RunState")), None)
    if run_state is None:
        if path.is_file() and is_research_layout(state.get("model") or {}):
            return read_research_checkpoint(path, model_config)[0], {}
        raise CheckpointError(f"{path}: not a bertforge checkpoint (no RunState with the model config) nor one in "
                              f"the research repository's layout")
    model = ModernBertForMaskedLM(ModernBertConfig(**run_state["model_config"]), init=False)
    weights = {k.removeprefix("model."): v for k, v in state["model"].items()}
    load_state_dict_checked(model, weights, source=str(path))
    return model, run_state


def trained_length(run_config: Path) -> int | None:
    """The row length of the run whose resolved config.yaml this is (the context its model was trained at)."""
    if not run_config.is_file():
        return None
    return ((yaml.safe_load(run_config.read_text()) or {}).get("data") or {}).get("max_seq_len")
