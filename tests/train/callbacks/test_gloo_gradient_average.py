"""GlooFsdpGradientAverage divides each gradient by the world size once per step; runs that do not need it get no
callback."""

import torch
from callback_harness import Recorder, fit, train_config

from bertforge.train.callbacks.gloo_gradient_average import GlooFsdpGradientAverage, gloo_gradient_fix


def test_gradients_are_divided_by_the_world_size(tmp_path, sample_data):
    before, after = [], []

    def grads(into):
        return lambda event, state: into.append([p.grad.clone() for p in state.model.parameters()
                                                 if p.grad is not None])
    fit(train_config(tmp_path, sample_data), [Recorder(grads(before), "after_train_batch"),
                                              GlooFsdpGradientAverage(world_size=4),
                                              Recorder(grads(after), "after_train_batch")], max_duration="2ba")
    assert len(before) == len(after) == 2
    for step_before, step_after in zip(before, after, strict=True):
        assert len(step_before) == len(step_after) > 0
        for grad, divided in zip(step_before, step_after, strict=True):
            assert torch.allclose(divided, grad / 4)


def test_only_fsdp2_over_several_ranks_needs_it():
    assert gloo_gradient_fix("ddp", 4) == [] and gloo_gradient_fix("fsdp2", 1) == []
