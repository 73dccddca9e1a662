"""The analyser on attention: the training step's peak against the CPU allocator's, and the
multiply-adds against the hand formula. A CPU runs ``scaled_dot_product_attention`` through its flash
kernel, which keeps the output and a logsumexp for backward, not the N x N scores its math path keeps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnnkit
from cnnkit.analysis.measure import measure_peak

B, L, E, H = 4, 48, 32, 4


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNKIT_HOME", str(tmp_path / "home"))  # the backend is calibrated, not read back


class MHA(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool):
        super().__init__()
        self.batch_first, self.need_weights = batch_first, need_weights
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first)

    def forward(self, x):  # (B, L, E)
        x = x if self.batch_first else x.transpose(0, 1)
        y, _ = self.attn(x, x, x, need_weights=self.need_weights)
        return (y if self.batch_first else y.transpose(0, 1)).flatten(1)


class SDPA(nn.Module):
    def __init__(self, mask: str | None = None):
        super().__init__()
        self.qkv, self.mask = nn.Linear(E, 3 * E), mask

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, H, E // H).permute(2, 0, 3, 1, 4)
        mask = None
        if self.mask == "bool":
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        elif self.mask == "float":
            mask = torch.zeros(n, n, dtype=x.dtype, device=x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.mask == "causal")
        return y.transpose(1, 2).reshape(b, -1)


class Handwritten(nn.Module):
    """softmax(Q K^T / sqrt(d)) V in plain operations, one head."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1)
        return (a @ v).flatten(1)


NETS = {
    "mha-batch-first": lambda: MHA(True, False),
    "mha-seq-first": lambda: MHA(False, False),
    "mha-batch-first-weights": lambda: MHA(True, True),
    "mha-seq-first-weights": lambda: MHA(False, True),
    "sdpa": lambda: SDPA(),
    "sdpa-bool-mask": lambda: SDPA("bool"),
    "sdpa-float-mask": lambda: SDPA("float"),
    "sdpa-causal": lambda: SDPA("causal"),
    "handwritten": Handwritten,
}


@pytest.mark.parametrize("name", list(NETS))
def test_attention_training_peak_within_5_percent(name):
    """Counted as saved for backward, the math path's N x N scores and probabilities would make the
    prediction 1.4x to 5x the real peak, growing with the sequence length."""
    torch.manual_seed(0)
    model = NETS[name]()
    s = cnnkit.summary(model, input_size=(L, E), batch_size=B)
    predicted = s.memory["training_peak_bytes"]
    measured = measure_peak(model, (B, L, E), training=True)
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)


def test_sdpa_saves_output_and_logsumexp_not_the_scores():
    s = cnnkit.summary(SDPA(), input_size=(L, E), batch_size=B, backend_model=False)
    d = E // H
    # query, key and value (one storage: the projection's output), the output and the logsumexp
    attention = 4 * (B * L * 3 * E + B * H * L * d + B * H * L)
    loss = 4 * B * L * E + 8 * B + 4  # the loss's log-probabilities, targets and total weight
    assert s.memory["saved_activation_bytes"] == attention + loss
    assert attention < 4 * B * H * L * L  # less than the scores alone


def test_attention_macs_against_the_hand_formula():
    """Q K^T and A V: B * H * L * L * d each; backward recomputes Q K^T and takes four products more
    (torch's FLOP counter does not count the CPU flash kernel at all)."""
    d = E // H
    qkv = B * L * E * 3 * E
    product = B * H * L * L * d
    for model in (SDPA(), SDPA("causal")):
        s = cnnkit.summary(model, input_size=(L, E), batch_size=B, backend_model=False)
        assert s.totals["macs"] == qkv + 2 * product
        # backward: the projection's weight gradient (its input needs none), the attention's five products
        assert s.totals["training_macs"] == s.totals["macs"] + qkv + 5 * product
    one_head = B * L * L * E
    s = cnnkit.summary(Handwritten(), input_size=(L, E), batch_size=B, backend_model=False)
    assert s.totals["macs"] == qkv + 2 * one_head
    out_proj = B * L * E * E
    for need_weights in (True, False):
        s = cnnkit.summary(MHA(True, need_weights), input_size=(L, E), batch_size=B, backend_model=False)
        assert s.totals["macs"] == qkv + 2 * product + out_proj


class TwoProducts(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(E, E))

    def forward(self, x):  # (B, L, E) @ (E, E): mm on the folded batch, then _unsafe_view
        return (x @ self.w + x @ self.w).flatten(1)


def test_a_view_an_op_returns_is_no_new_allocation():
    """``_unsafe_view`` returns a view of its input though its schema promises a fresh tensor: the
    second, identical call (whose result the trace makes from the first's shapes) allocates nothing."""
    from cnnkit.analysis.trace import trace

    tr = trace(TwoProducts(), (B, L, E), torch.float32, False)
    views = [op.out_bytes for op in tr.ops if op.name == "_unsafe_view"]
    assert views == [0, 0]
