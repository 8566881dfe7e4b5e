"""FlashAttention-2 and the PyTorch path give the same logits; runs wherever CUDA and flash-attn are present."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from bertforge.model import ModernBertForMaskedLM
from bertforge.model.attention import flash_varlen, resolve_backend

needs_flash = pytest.mark.skipif(not torch.cuda.is_available() or flash_varlen is None,
                                 reason="needs a CUDA device and flash-attn (`pip install -e .[gpu]`)")


@needs_flash
def test_flash_and_sdpa_give_the_same_logits():
    torch.manual_seed(0)
    lengths = [300, 17, 129, 1000]
    flat = torch.randint(4, 515, (sum(lengths),), device="cuda")
    cu = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32).cuda()
    logits = {}
    for backend in ("flash", "sdpa"):
        torch.manual_seed(0)
        model = ModernBertForMaskedLM(tiny_config(attention_backend=backend, local_attention=128)).cuda().eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            logits[backend] = model(flat, cu_seqlens=cu, max_seqlen=max(lengths)).logits.float()
    torch.testing.assert_close(logits["flash"], logits["sdpa"], atol=3e-2, rtol=3e-2)


def test_asking_for_flash_where_it_cannot_run_is_a_clear_error():
    qkv = torch.zeros(4, 3, 2, 8)
    with pytest.raises(RuntimeError, match="flash-attn"):
        resolve_backend("flash", qkv)
    assert resolve_backend("auto", qkv) == "sdpa"
