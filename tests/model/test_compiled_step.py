"""A compiled training forward is one graph, compiles once for batches of any documents, and computes what the
eager forward computes (docs/model.md, "Compiling").

The batches are real: the packed loader's micro-batches (one 448-token row each) of the sample corpus's
documents, so the tokens, documents and masked positions differ from batch to batch. Graphs are counted by Dynamo itself
(``torch._dynamo.explain``, and a backend that only counts what it is given), so no C++ compiler is needed;
the compiled-against-eager check runs Dynamo and AOT autograd (``aot_eager``), which produce the forward and
backward graphs that inductor would then turn into kernels.
"""

import numpy as np
import pytest
import torch
from helpers import read_docs, release_shared_memory, tiny_config

from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.loader import PackedMLMLoader
from bertforge.model import ModernBertForMaskedLM
from bertforge.model.modernbert import mark_dynamic_sizes

BATCHES = 20
ROW = 448
"""Rows of 448 tokens: 30% of a row's tokens fall either side of the 128-prediction bucket, and local layers
(128-token windows) take the blocked sliding-window path."""


@pytest.fixture(scope="module")
def batches(sample_data, tmp_path_factory) -> list[dict]:
    """The loader's first 20 micro-batches after its packer was handed the sample's documents cut to random
    lengths, short ones as likely as long (the sample's own are mostly longer than a row: rows of one each)."""
    release_shared_memory(tmp_path_factory.getbasetemp())
    streams = {name: StreamConfig(local=str(sample_data["mds"] / name)) for name in ("code", "web", "science")}
    loader = PackedMLMLoader(DataConfig(tokenizer=sample_data["tokenizer"], streams=streams, max_seq_len=ROW,
                                        micro_batch_size=1, buffer_docs=64))
    rng = np.random.default_rng(0)
    for doc in read_docs(sample_data["mds"] / "web")[:300]:
        loader.packer.add(doc[:int(np.exp(rng.uniform(np.log(8), np.log(ROW))))].astype(np.int64))
    taken = [batch.model_inputs() for batch, _ in zip(loader, range(BATCHES))]
    del loader
    release_shared_memory(tmp_path_factory.getbasetemp())
    return taken


def _model(backend: str, chunk: int = 0) -> ModernBertForMaskedLM:
    torch.manual_seed(0)
    return ModernBertForMaskedLM(tiny_config(vocab_size=2048, attention_backend=backend, local_attention=128,
                                             mlm_loss_chunk=chunk))


def test_the_batches_vary_as_training_batches_do(batches):
    """What the other tests lean on: each size a compiler would otherwise specialise on changes between batches
    (best-fit packing fills a row to within a few tokens, but with other documents and masked positions)."""
    for key in ("input_ids", "cu_seqlens", "prediction_index"):
        assert len({b[key].shape[0] for b in batches}) > 1, key
    assert all(b["prediction_index"].shape[0] % 128 == 0 for b in batches)


@pytest.mark.parametrize("backend,chunk", [("sdpa", 0), ("flex", 0), ("sdpa", 100)],
                         ids=["sdpa", "flex", "sdpa-fused-loss"])
def test_forward_and_loss_trace_as_one_graph(batches, backend, chunk):
    model = _model(backend, chunk)
    explained = torch._dynamo.explain(lambda b: model(**b).loss)(batches[0])
    reasons = [reason.reason.splitlines()[0] for reason in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count, reasons) == (1, 0, [])


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_twenty_batches_of_varying_documents_compile_once(batches, backend):
    """With the varying sizes marked dynamic (as the trainer does on each micro-batch), the first batch's graph
    serves every later one: no recompilation. (The fused loss is the exception: it recompiles per prediction
    bucket, docs/model.md.)"""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    model = _model(backend)
    compiled = torch.compile(model, backend=counting_backend)
    for batch in batches:
        compiled(**mark_dynamic_sizes(dict(batch))).loss.backward()
    assert len(graphs) == 1


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    module = getattr(model, "_orig_mod", model)  # a compiled module's parameters are its original's
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_compiled_loss_and_gradients_equal_eager(batches, backend):
    """The compiled SDPA path attends over the loader's packed rows, the eager one over length groups; flex
    builds its block masks inside the graph. Both must give the eager numbers."""
    torch._dynamo.reset()
    model = _model(backend)
    compiled = torch.compile(model, backend="aot_eager")
    for batch in batches[:2]:  # the second through the dynamic graph the first compiled
        eager_loss, eager_grads = _loss_and_grads(model, batch)
        compiled_loss, compiled_grads = _loss_and_grads(compiled, mark_dynamic_sizes(dict(batch)))
        torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-4, rtol=0)
        assert compiled_grads.keys() == eager_grads.keys()
        for name, grad in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_a_padded_prediction_index_changes_nothing(batches):
    """The loader's -1 padding of the prediction index counts for nothing: loss and gradients equal those of
    the labels alone, for the plain and the fused loss."""
    batch = batches[0]
    assert (batch["prediction_index"] < 0).any()
    for chunk in (0, 100):
        model = _model("sdpa", chunk)
        padded = _loss_and_grads(model, batch)
        bare = _loss_and_grads(model, {k: v for k, v in batch.items() if k != "prediction_index"})
        torch.testing.assert_close(padded[0], bare[0], atol=1e-6, rtol=0)
        for name, grad in bare[1].items():
            torch.testing.assert_close(padded[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
