"""Masking as docs/data.md states it, measured on real batches of the packed loader: the rate over ordinary tokens,
the 80/10/10 split, no special token ever chosen, random replacements from the tokenizer's own vocabulary (not the
model's larger embedding table) and never a special. That a resumed loader masks the same positions is
test_data_loader's exact-resume test (labels equal batch for batch)."""

from itertools import islice

import numpy as np

from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.loader import PackedMLMLoader
from bertforge.data.tokenizer import load_tokenizer, special_ids


def test_masking_on_real_batches_is_as_documented(sample_data):
    tokenizer = load_tokenizer(sample_data["tokenizer"])
    streams = {name: StreamConfig(local=str(sample_data["mds"] / name)) for name in ("code", "web", "science")}
    loader = PackedMLMLoader(DataConfig(tokenizer=sample_data["tokenizer"], streams=streams, max_seq_len=1024,
                                        micro_batch_size=4, buffer_docs=256, mask_rate=0.3),
                             vocab_size=8192)  # the tiny model's table is larger than the tokenizer
    specials = np.array(sorted(set(tokenizer.all_special_ids) | special_ids(tokenizer).as_set()))
    mask_id = special_ids(tokenizer).mask
    ordinary = chosen = as_mask = unchanged = replaced = 0
    for batch in islice(loader, 40):
        inputs, labels = batch.input_ids.numpy(), batch.labels.numpy()
        picked = labels != -100
        original = np.where(picked, labels, inputs)
        is_special = np.isin(original, specials)
        assert not (picked & is_special).any()  # CLS, SEP, PAD, MASK never chosen
        assert (inputs[~picked] == original[~picked]).all()  # what is not chosen is untouched
        other = picked & (inputs != mask_id) & (inputs != labels)
        assert (inputs[other] < len(tokenizer)).all() and not np.isin(inputs[other], specials).any()
        ordinary += int((~is_special).sum())
        chosen, as_mask = chosen + int(picked.sum()), as_mask + int((picked & (inputs == mask_id)).sum())
        unchanged, replaced = unchanged + int((picked & (inputs == labels)).sum()), replaced + int(other.sum())
    assert chosen > 30_000
    assert abs(chosen / ordinary - 0.3) < 0.005
    assert abs(as_mask / chosen - 0.8) < 0.01
    assert abs(unchanged / chosen - 0.1) < 0.01  # (a random draw equal to the original counts here: 1 in ~2000)
    assert abs(replaced / chosen - 0.1) < 0.01
