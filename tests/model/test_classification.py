"""ModernBertForSequenceClassification: the same weights, pooling, losses and config as transformers', both ways,
and a start from a masked-LM (the encoder and pretrained head kept, the decoder dropped, a fresh classifier)."""

import json

import pytest
import torch
from helpers import hf_reference_model, padded_batch

from bertforge.errors import CheckpointError
from bertforge.model import ClassifierConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification
from bertforge.model.hf_io import from_hf_config

CASES = {  # problem_type, labels, pooling, the labels a batch of three carries
    "single-cls": ("single_label_classification", ["a", "b", "c"], "cls", torch.tensor([0, 2, 1])),
    "regression-mean": ("regression", ["score"], "mean", torch.tensor([0.5, 3.0, 4.75])),
    "multi-label-mean": ("multi_label_classification", ["x", "y", "z", "w"], "mean",
                         torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]])),
}


def _hf_classifier(case: str):
    problem, labels, pooling, _ = CASES[case]
    return hf_reference_model(classifier=True, num_labels=len(labels), problem_type=problem,
                              id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                              classifier_pooling=pooling)


def _same_outputs(ours: ModernBertForSequenceClassification, hf, labels: torch.Tensor) -> None:
    ids, mask = padded_batch([40, 17, 64], hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask.long(), labels=labels)
        padded = ours.eval()(ids, attention_mask=mask, labels=labels)
        lengths = mask.sum(1)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
        packed = ours(ids[mask], cu_seqlens=cu, max_seqlen=int(lengths.max()), labels=labels)
    for got in (padded, packed):
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_classifier_loads_with_equal_logits_and_loss(tmp_path, case):
    hf = _hf_classifier(case)
    hf.save_pretrained(tmp_path)
    ours = ModernBertForSequenceClassification.from_pretrained(tmp_path)
    assert ours.classifier_config == ClassifierConfig(labels=CASES[case][1], problem_type=CASES[case][0],
                                                      pooling=CASES[case][2], dropout=0.0)
    _same_outputs(ours, hf, CASES[case][3])


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_classifier_saves_to_what_transformers_loads_with_equal_logits(tmp_path, case):
    from transformers import AutoModelForSequenceClassification

    problem, labels, pooling, batch_labels = CASES[case]
    config = from_hf_config(hf_reference_model().config.to_dict())
    ours = ModernBertForSequenceClassification(config, ClassifierConfig(labels, problem, pooling))
    with torch.no_grad():
        for param in ours.parameters():
            if param.dim() == 1:
                param.normal_(0.5, 0.2)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["ModernBertForSequenceClassification"]
    assert saved["id2label"] == {str(i): n for i, n in enumerate(labels)} and saved["classifier_pooling"] == pooling
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert hf.config.problem_type == problem and hf.num_labels == len(labels)
    _same_outputs(ours, hf, batch_labels)


def test_a_masked_lm_starts_a_classifier_with_its_encoder_and_head(tmp_path):
    mlm = hf_reference_model()
    mlm.save_pretrained(tmp_path)
    labels = ClassifierConfig(["neg", "pos"], pooling="cls")
    with pytest.raises(CheckpointError, match="holds no sequence classifier; name the task's labels"):
        ModernBertForSequenceClassification.from_pretrained(tmp_path)
    ours = ModernBertForSequenceClassification.from_pretrained(tmp_path, labels)
    ours_mlm = ModernBertForMaskedLM.from_pretrained(tmp_path)
    state = ours.state_dict()
    for name, tensor in ours_mlm.state_dict().items():
        if name.startswith(("model.", "head.")):
            assert torch.equal(state[name], tensor), name
    assert not any(k.startswith("decoder.") for k in state)
    assert float(ours.classifier.weight.std()) == pytest.approx(64 ** -0.5, rel=0.2) and not ours.classifier.bias.any()
    # A fine-tuned classifier for other labels (MNLI's three, say) keeps its encoder and head, not its classifier.
    ours.save_pretrained(tmp_path / "two")
    three = ModernBertForSequenceClassification.from_pretrained(tmp_path / "two", ClassifierConfig(["e", "n", "c"]))
    assert three.classifier.out_features == 3
    assert torch.equal(three.head.dense.weight, ours.head.dense.weight)
    again = ModernBertForSequenceClassification.from_pretrained(tmp_path / "two", labels)
    assert torch.equal(again.classifier.weight, ours.classifier.weight)
