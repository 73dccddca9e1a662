"""The CPU inference fast path of ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``, traced.

In eval mode without autograd, with batch-first inputs (and the other conditions their ``forward``
checks), these modules do not run their Python path: they call one fused kernel,
``torch._native_multi_head_attention`` or ``torch._transformer_encoder_layer_fwd``, which allocates
other buffers (a (3, B, H, T, d) copy of the projected query, key and value; the N x N scores kept
while the second product runs; a boolean copy of the mask; with ``need_weights`` the scores summed over
the heads). Their ``forward`` refuses that kernel for meta tensors (and the encoder layer for a
module with hooks, which the trace adds to every module), so a meta trace would run the Python path.

During a CPU trace, :func:`cpu_fast_paths` replaces the ``forward`` of each such module (PyTorch's
own, not a subclass's override) by one that checks the conditions PyTorch's checks (the meta device
standing for the CPU, the trace's own hooks not counted) and, where they hold, runs the ATen
operations the CPU kernel dispatches, in its order (``aten/src/ATen/native/transformers/attention.cpp``
and ``transformer.cpp``; checked against the CPU allocator's events): the dispatch mode sees their
allocations and frees as in a real run. Where they do not hold, PyTorch's ``forward`` runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

aten = torch.ops.aten
_MISSING = object()


def _run_as(module: nn.Module, fn, *args):
    """``fn(*args)`` run as ``module``'s forward: its hooks (the trace's rows) see the call."""
    saved = module.__dict__.get("forward", _MISSING)
    module.forward = fn
    try:
        return module(*args)
    finally:
        if saved is _MISSING:
            del module.forward
        else:
            module.forward = saved


def _kernel_allowed(tensors: tuple) -> bool:
    """The checks both modules make on their tensors last: none is missing (PyTorch's own check would
    fail on it), none overrides torch functions, and none needs a gradient while autograd records."""
    if any(t is None for t in tensors):
        return False
    if torch.overrides.has_torch_function(tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _mha_takes_fast_path(mha: nn.MultiheadAttention, query, key, value, key_padding_mask, attn_mask) -> bool:
    """The conditions of ``nn.MultiheadAttention.forward`` for ``torch._native_multi_head_attention``."""
    if any(m is not None and torch.is_floating_point(m) for m in (attn_mask, key_padding_mask)):
        return False
    return (
        torch.backends.mha.get_fastpath_enabled()
        and query.dim() == 3
        and query is key
        and key is value
        and mha.in_proj_weight is not None
        and mha.in_proj_bias is not None  # without it PyTorch's forward takes the Python path
        and query.dtype == mha.in_proj_weight.dtype == mha.in_proj_bias.dtype
        and not mha.training
        and mha.num_heads % 2 == 0
        and mha.batch_first
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
        and mha._qkv_same_embed_dim
        and not torch.is_autocast_enabled()
        and _kernel_allowed(
            (query, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight)
            + ((mha.out_proj.bias,) if mha.out_proj.bias is not None else ())
        )
    )


def _encoder_takes_fast_path(layer: nn.TransformerEncoderLayer, src, user_hooked: set) -> bool:
    """The conditions of ``nn.TransformerEncoderLayer.forward`` for ``torch._transformer_encoder_layer_fwd``
    (hooks count only where the model has its own: ``user_hooked``, ids of the modules with some)."""
    sa = layer.self_attn
    return (
        torch.backends.mha.get_fastpath_enabled()
        and src.dim() == 3
        and not layer.training
        and sa.batch_first
        and sa.in_proj_bias is not None
        and sa._qkv_same_embed_dim
        and bool(getattr(layer, "activation_relu_or_gelu", 0))
        and layer.norm1.eps == layer.norm2.eps
        and sa.num_heads % 2 == 0
        and not torch.is_autocast_enabled()
        and not any(id(m) in user_hooked for m in layer.modules())
        and _kernel_allowed(
            (src, sa.in_proj_weight, sa.in_proj_bias, sa.out_proj.weight, sa.out_proj.bias)
            + (layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias)
            + (layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias)
        )
    )


def _native_mha(mha: nn.MultiheadAttention, x, mask, mask_type, need_weights: bool, average: bool):
    """``torch._native_multi_head_attention(x, x, x, ...)`` as the CPU runs it: ``(output, weights or None)``."""
    b, t, e = x.shape
    h = mha.num_heads
    d = e // h
    qkv = torch.matmul(x, mha.in_proj_weight.t())  # (B, T, 3E)
    # _transform_bias_rescale_qkv: the bias added into one (3, B, H, T, d) buffer (the query also scaled)
    q_k_v = torch.empty((3, b, h, t, d), dtype=qkv.dtype, device=qkv.device)
    torch.add(qkv.view(b, t, 3, h, d).permute(2, 0, 3, 1, 4), mha.in_proj_bias.view(3, 1, h, 1, d), out=q_k_v)
    del qkv
    q, k, v = (part.reshape(b * h, t, d) for part in q_k_v.view(3 * b, h, t, d).split(b))
    del q_k_v  # q, k and v keep it
    scores = torch.bmm(q, k.transpose(1, 2))
    if mask is None:
        aten._softmax.out(scores, -1, False, out=scores)  # in place
    else:  # _masked_softmax on a boolean copy of the mask, into a new tensor
        if mask.dtype != torch.bool:
            mask = mask.to(torch.bool)
        probs = torch.empty_like(scores)
        aten._softmax.out(scores, -1, False, out=probs)
        scores = probs
        del probs, mask
    ctx = torch.bmm(scores, v, out=q)  # into the query's storage
    if not need_weights:
        scores = None
    merged = ctx.view(b, h, t, d).permute(0, 2, 1, 3).contiguous().view(b * t, e)
    out = F.linear(merged, mha.out_proj.weight, mha.out_proj.bias).view(b, t, e)
    del merged  # (the buffer of q, k and v lives on to the kernel's end)
    if scores is not None:
        scores = scores.view(b, h, t, t)
        if average:
            scores = scores.sum(1)
            scores.div_(h)
    return out, scores


def _encoder_layer(layer: nn.TransformerEncoderLayer, src, mask, mask_type):
    """``torch._transformer_encoder_layer_fwd`` as the CPU runs it (each step run as the sub-module
    it stands for, so that the layers' rows stay)."""
    sa, eps = layer.self_attn, layer.norm1.eps
    b, t, e = src.shape

    def norm(module, x):
        return _run_as(module, lambda y: F.layer_norm(y, (e,), module.weight, module.bias, eps), x)

    def linear(module, x, act=None):
        def run(y):
            y2 = y.view(b * t, -1)
            if act is None:
                return torch.addmm(module.bias, y2, module.weight.t()).view(b, t, -1)
            return torch._addmm_activation(module.bias, y2, module.weight.t(), use_gelu=act).view(b, t, -1)

        return _run_as(module, run, x)

    x = norm(layer.norm1, src) if layer.norm_first else src
    x = _run_as(sa, lambda y: _native_mha(sa, y, mask, mask_type, False, True)[0], x)
    x.add_(src)
    if not layer.norm_first:
        x = norm(layer.norm1, x)
    residual = x
    if layer.norm_first:
        x = norm(layer.norm2, x)
    x = linear(layer.linear2, linear(layer.linear1, x, act=layer.activation_relu_or_gelu == 2))
    x.add_(residual)
    if not layer.norm_first:
        x = norm(layer.norm2, x)
    return x


def _mha_forward(
    mha,
    user_hooked,
    query,
    key,
    value,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    average_attn_weights=True,
    is_causal=False,
):
    if not _mha_takes_fast_path(mha, query, key, value, key_padding_mask, attn_mask):
        return type(mha).forward(
            mha, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
    merged, mask_type = _merged_masks(mha, attn_mask, key_padding_mask, query)
    return _native_mha(mha, query, merged, mask_type, need_weights, average_attn_weights)


def _encoder_forward(layer, user_hooked, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    if not _encoder_takes_fast_path(layer, src, user_hooked):
        return type(layer).forward(layer, src, src_mask, src_key_padding_mask, is_causal)
    merged, mask_type = _merged_masks(layer.self_attn, src_mask, src_key_padding_mask, src)
    return _encoder_layer(layer, src, merged, mask_type)


def _merged_masks(mha: nn.MultiheadAttention, attn_mask, key_padding_mask, x):
    """The two masks made canonical (float or None, as the modules' forwards make them) and merged, as
    the fast path receives them: ``(mask, mask_type)``."""
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=x.dtype,
    )
    attn_mask = F._canonical_mask(
        mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=x.dtype, check_other=False
    )
    return mha.merge_masks(attn_mask, key_padding_mask, x)


_FAST_FORWARDS = {nn.MultiheadAttention.forward: _mha_forward, nn.TransformerEncoderLayer.forward: _encoder_forward}


@contextmanager
def cpu_fast_paths(model: nn.Module, on: bool):
    """While active (``on``), PyTorch's own ``MultiheadAttention`` and ``TransformerEncoderLayer``
    modules in ``model`` take their CPU fast path where a CPU would (see the module docstring).

    Enter it before the trace adds its hooks: the hooks the model has then are its own.
    """
    replaced = []
    try:
        if on:
            user_hooked = {id(m) for m in model.modules() if m._forward_hooks or m._forward_pre_hooks}
            for m in model.modules():
                if isinstance(m, torch.jit.ScriptModule):
                    continue
                fn = _FAST_FORWARDS.get(type(m).forward)
                if fn is not None and "forward" not in m.__dict__:  # a forward of its own is not PyTorch's
                    m.forward = partial(fn, m, user_hooked)
                    replaced.append(m)
        yield
    finally:
        for m in replaced:
            m.__dict__.pop("forward", None)
