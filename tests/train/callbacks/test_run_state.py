"""RunState carries the loader's position, the model config and the tokenizer into a checkpoint; loading it makes
a fresh loader continue with exactly the batches the first one would have given."""

import dataclasses

import torch
from callback_harness import train_config

from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.train.callbacks.run_state import RunState
from bertforge.train.run import build_data


def test_state_resumes_the_data_exactly_and_names_model_and_tokenizer(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data)
    loader, steps = build_data(config, world_size=1)
    state = RunState(loader, steps, config, lineage={"phases": ["pretrain"]})
    batches = iter(steps)
    for _ in range(3):
        next(batches)
    saved = state.state_dict()
    assert saved["model_config"] == dataclasses.asdict(config.model)
    assert saved["tokenizer"] == config.data.tokenizer
    assert saved["tokenizer_fingerprint"] == tokenizer_fingerprint(config.data.tokenizer)
    assert saved["lineage"] == {"phases": ["pretrain"]} and saved["run_name"] == config.run_name
    expected = [next(batches) for _ in range(2)]

    fresh_loader, fresh_steps = build_data(config, world_size=1)
    RunState(fresh_loader, fresh_steps, config, lineage={}).load_state_dict(saved)
    resumed = iter(fresh_steps)
    for want in expected:
        got = next(resumed)
        assert [got[key] for key in ("num_tokens", "num_slots", "num_masked", "num_docs")] == \
            [want[key] for key in ("num_tokens", "num_slots", "num_masked", "num_docs")]
        assert len(got["micro_batches"]) == len(want["micro_batches"])
        for mine, theirs in zip(got["micro_batches"], want["micro_batches"], strict=True):
            for key in ("input_ids", "labels", "cu_seqlens"):
                assert torch.equal(mine[key], theirs[key]), key

