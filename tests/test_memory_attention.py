"""The analyser on attention: the peaks against the CPU allocator's, and the multiply-adds against the
hand formula. A CPU runs ``scaled_dot_product_attention`` through its flash kernel, which keeps the
output and a logsumexp for backward, not the N x N scores its math path keeps; in inference,
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` run their fused fast-path kernels."""

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
    def __init__(self, batch_first: bool, need_weights: bool, padding: bool = False, heads: int = H):
        super().__init__()
        self.batch_first, self.need_weights, self.padding = batch_first, need_weights, padding
        self.attn = nn.MultiheadAttention(E, heads, batch_first=batch_first)

    def forward(self, x):  # (B, L, E)
        mask = None
        if self.padding:  # the last three positions of every sequence are padding
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            mask[:, -3:] = True
        x = x if self.batch_first else x.transpose(0, 1)
        y, _ = self.attn(x, x, x, need_weights=self.need_weights, key_padding_mask=mask)
        return (y if self.batch_first else y.transpose(0, 1)).flatten(1)


class Encoder(nn.Module):
    def __init__(self, norm_first: bool, hooked: bool = False):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(E, H, 2 * E, batch_first=True, norm_first=norm_first)
        if hooked:  # a hook of the model's own: PyTorch's forward then refuses the fast path
            self.layer.linear1.register_forward_hook(lambda module, inputs, output: None)

    def forward(self, x):
        return self.layer(x).flatten(1)


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


INFERENCE_NETS = {
    "mha-batch-first": lambda: MHA(True, False),
    "mha-batch-first-weights": lambda: MHA(True, True),
    "mha-batch-first-padding": lambda: MHA(True, False, padding=True),
    "mha-batch-first-weights-padding": lambda: MHA(True, True, padding=True),
    "mha-seq-first": lambda: MHA(False, False),
    "mha-seq-first-weights-padding": lambda: MHA(False, True, padding=True),
    "mha-odd-heads": lambda: MHA(True, False, heads=1),
    "encoder-layer": lambda: Encoder(False),
    "encoder-layer-norm-first": lambda: Encoder(True),
    "encoder-layer-hooked": lambda: Encoder(False, hooked=True),
}


@pytest.mark.parametrize("name", list(INFERENCE_NETS))
def test_attention_inference_peak_within_5_percent(name):
    """In eval mode without autograd, batch first, a CPU runs multi-head attention and encoder layers
    through one fused kernel (``torch._native_multi_head_attention``, ``_transformer_encoder_layer_fwd``)
    that PyTorch refuses on the meta device: traced as the Python path, the peak was 0.2x to 1.4x the
    real one. Sequence-first or odd-headed attention takes the Python path on both; an encoder layer
    with a hook of the model's own runs its Python path, whose attention still takes the fast one."""
    torch.manual_seed(0)
    model = INFERENCE_NETS[name]()
    model.eval()
    s = cnnkit.summary(model, input_size=(L, E), batch_size=B)
    predicted = s.memory["inference_peak_bytes"]
    measured = measure_peak(model, (B, L, E), training=False)
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)
    assert not any("forward" in vars(m) for m in model.modules())  # the trace's replacements are gone


def test_fast_path_layers_keep_their_rows_and_macs():
    """The encoder layer's fused kernel is traced step by step as the sub-modules it stands for: the
    same rows (dropouts aside: the kernel has none) and multiply-adds as its Python path."""
    torch.manual_seed(0)
    model = Encoder(False)
    fast = cnnkit.summary(model, input_size=(L, E), batch_size=B, backend_model=False)
    torch.backends.mha.set_fastpath_enabled(False)  # PyTorch's switch: the Python path everywhere
    try:
        slow = cnnkit.summary(model, input_size=(L, E), batch_size=B, backend_model=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert fast.memory["inference_peak_bytes"] != slow.memory["inference_peak_bytes"]
    rows = lambda s: [(r["name"], r["output_shape"], r["macs"]) for r in s.layers if "dropout" not in r["name"]]  # noqa: E731
    assert rows(fast) == rows(slow)
    assert fast.totals["macs"] == slow.totals["macs"] == B * L * (3 * E * E + 2 * L * E + E * E + 4 * E * E)


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


class Feedforward(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(E, 2 * E), nn.GELU(), nn.Linear(2 * E, E))

    def forward(self, x):
        return self.net(x).flatten(1)


HALF_NETS = {"feedforward": Feedforward, "encoder-layer": lambda: Encoder(False)}


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", list(HALF_NETS))
def test_bfloat16_products_peak_within_5_percent(name, training):
    """A CPU multiplies bfloat16 matrices through oneDNN, which allocates packed copies and 32-bit
    accumulators inside the op (float32 products allocate nothing): measured like a convolution's
    buffers, else the prediction is 0.5x to 0.7x the real peak."""
    torch.manual_seed(0)
    model = HALF_NETS[name]()
    s = cnnkit.summary(model, input_size=(L, E), batch_size=B, dtype="bfloat16")
    predicted = s.memory["training_peak_bytes" if training else "inference_peak_bytes"]
    measured = measure_peak(model, (B, L, E), dtype=torch.bfloat16, training=training)
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)


def test_only_16_bit_products_are_measured():
    """The backend model runs a matrix product for real only where its operands are 16-bit."""
    from cnnkit.analysis.backend import CPU_BACKEND_OPS
    from cnnkit.analysis.trace import trace

    for dtype, measured in ((torch.float32, False), (torch.bfloat16, True), (torch.float16, True)):
        tr = trace(Feedforward(), (B, L, E), dtype, False, backend_ops=CPU_BACKEND_OPS)
        products = [op for op in tr.ops if op.name == "addmm"]
        assert len(products) == 2
        assert all((op.backend_key is not None) == measured for op in products), dtype
