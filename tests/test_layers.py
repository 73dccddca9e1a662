"""cnnkit.layers against reference computations: explicit F.pad + F.conv2d, loops, hand values."""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.errors import CnnkitError
from cnnkit.layers import (
    AvgPool1dSame,
    AvgPool2dSame,
    Conv1dSame,
    Conv2dSame,
    Conv3dSame,
    ConvTranspose2dSame,
    DepthwiseConv2d,
    Dropout,
    LocalResponseNorm,
    MaxPool2dSame,
    MaxPool3dSame,
    SeparableConv2d,
    SqueezeExcite,
    conv_transpose_same_args,
    get_activation,
    is_depthwise,
    keep_depthwise,
    pad_for,
    same_pad,
)


# ---------------------------------------------------------------- padding arithmetic
@pytest.mark.parametrize("size", [5, 6, 7, 8, 224, 225])
@pytest.mark.parametrize(
    "kernel,stride,dilation",
    [(1, 1, 1), (2, 1, 1), (3, 1, 1), (3, 2, 1), (3, 3, 1), (5, 2, 1), (4, 3, 1), (3, 1, 2), (3, 2, 3), (7, 2, 1)],
)
def test_same_pad_gives_ceil_size_over_stride(size, kernel, stride, dilation):
    before, after = same_pad(size, kernel, stride, dilation)
    assert 0 <= after - before <= 1  # the odd extra at the end (TensorFlow)
    out = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    assert out == -(-size // stride)
    assert same_pad(size, kernel, stride, dilation, mode="caffe") == (after, before)


def test_same_pad_hand_values_and_chain():
    assert same_pad(5, 3, 2) == (1, 1)  # out 3, total (3-1)*2 + 3 - 5 = 2
    assert same_pad(6, 3, 2) == (0, 1)  # out 3, total 1: extra at the end
    assert same_pad(6, 3, 2, mode="caffe") == (1, 0)
    assert same_pad(8, 1, 3) == (0, 0)  # total would be negative
    assert same_pad(7, 3, 1, mode="valid") == (0, 0)
    conv = Conv2dSame(1, 1, 3, stride=2)
    x, sizes = torch.zeros(1, 1, 200, 300), []
    with torch.no_grad():
        for _ in range(3):
            x = conv(x)
            sizes.append(tuple(x.shape[2:]))
    assert sizes == [(100, 150), (50, 75), (25, 38)]
    assert pad_for((6, 5), 3, 2, 1, "same") == [1, 1, 0, 1]  # last dim first: W then H
    with pytest.raises(CnnkitError, match="Received: mode='full'"):
        same_pad(5, 3, mode="full")


# ---------------------------------------------------------------- convolutions
@pytest.mark.parametrize("mode", ["same", "caffe"])
@pytest.mark.parametrize(
    "kernel,stride,dilation", [(3, 1, 1), (2, 1, 1), (3, 2, 1), (4, 2, 1), (5, 3, 1), (3, 2, 2), (1, 2, 1)]
)
def test_conv2d_same_matches_explicit_padding(mode, kernel, stride, dilation):
    conv = Conv2dSame(3, 4, kernel, stride=stride, dilation=dilation, mode=mode)
    for h, w in [(9, 10), (16, 17)]:
        x = torch.randn(2, 3, h, w)
        pad = pad_for((h, w), kernel, stride, dilation, mode)
        ref = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, stride, 0, dilation)
        got = conv(x)
        assert got.shape[2:] == (-(-h // stride), -(-w // stride))
        torch.testing.assert_close(got, ref)


def test_caffe_and_same_differ_only_in_where_the_odd_pad_goes():
    torch.manual_seed(1)
    same, caffe = Conv2dSame(2, 3, 3, stride=2), Conv2dSame(2, 3, 3, stride=2, mode="caffe")
    caffe.load_state_dict(same.state_dict())
    x = torch.randn(1, 2, 8, 8)  # total pad 1 per dim
    ref_same = F.conv2d(F.pad(x, [0, 1, 0, 1]), same.weight, same.bias, 2)
    ref_caffe = F.conv2d(F.pad(x, [1, 0, 1, 0]), same.weight, same.bias, 2)
    torch.testing.assert_close(same(x), ref_same)
    torch.testing.assert_close(caffe(x), ref_caffe)
    assert not torch.allclose(same(x), caffe(x))
    x = torch.randn(1, 2, 9, 9)  # total pad 2 per dim: symmetric, the two modes agree
    torch.testing.assert_close(same(x), caffe(x))


def test_conv1d_conv3d_same_and_state_dict():
    c1 = Conv1dSame(2, 3, 4, stride=3)
    x1 = torch.randn(2, 2, 11)
    torch.testing.assert_close(c1(x1), F.conv1d(F.pad(x1, pad_for((11,), 4, 3)), c1.weight, c1.bias, 3))
    c3 = Conv3dSame(2, 3, 3, stride=2, bias=False)
    x3 = torch.randn(1, 2, 5, 6, 7)
    ref = F.conv3d(F.pad(x3, pad_for((5, 6, 7), 3, 2)), c3.weight, None, 2)
    torch.testing.assert_close(c3(x3), ref)
    assert c3(x3).shape[2:] == (3, 3, 4)
    assert list(Conv2dSame(3, 8, 3).state_dict()) == ["weight", "bias"]
    assert isinstance(c1, nn.Conv1d) and isinstance(c3, nn.Conv3d)
    # stride 1, odd kernel: a fixed symmetric padding, no dynamic pad
    assert Conv2dSame(3, 8, 5).padding == (2, 2) and Conv2dSame(3, 8, 5).pad_mode is None


@pytest.mark.parametrize("kernel,stride", [(5, 2), (4, 2), (3, 2), (1, 2), (3, 1), (2, 3), (3, 3)])
def test_conv_transpose_same_is_the_adjoint_of_conv_same(kernel, stride):
    """TF's conv2d_transpose('same') is the gradient of conv2d('same'): <conv(x), y> = <x, convT(y)>."""
    torch.manual_seed(2)
    conv = Conv2dSame(3, 5, kernel, stride=stride, bias=False)
    convt = ConvTranspose2dSame(5, 3, kernel, stride=stride, bias=False)
    convt.weight.data.copy_(conv.weight.data)  # (5, 3, k, k) both ways
    x = torch.randn(2, 3, 6 * stride, 7 * stride)
    y = torch.randn(2, 5, 6, 7)
    assert convt(y).shape == x.shape
    torch.testing.assert_close((conv(x) * y).sum(), (x * convt(y)).sum(), rtol=1e-4, atol=1e-4)
    p, op = conv_transpose_same_args(kernel, stride)
    plain = nn.ConvTranspose2d(5, 3, kernel, stride, padding=p, output_padding=op)
    assert plain(y).shape == x.shape


# ---------------------------------------------------------------- pooling
def _pool_reference(x, k, s, reduce):
    """Loop over TF "same" windows, clipped to the input (padding never counted)."""
    h, w = x.shape[-2:]
    (left, _), (top, _) = same_pad(w, k, s), same_pad(h, k, s)
    oh, ow = -(-h // s), -(-w // s)
    out = torch.empty(*x.shape[:-2], oh, ow)
    for i, j in itertools.product(range(oh), range(ow)):
        r0, c0 = i * s - top, j * s - left
        win = x[..., max(r0, 0) : r0 + k, max(c0, 0) : c0 + k]
        out[..., i, j] = reduce(win.flatten(-2), -1)
    return out


@pytest.mark.parametrize("k,s,h,w", [(2, 2, 5, 7), (3, 2, 6, 6), (3, 1, 4, 5), (3, 3, 7, 8)])
def test_pool_same_matches_window_loop(k, s, h, w):
    x = torch.randn(2, 3, h, w)
    torch.testing.assert_close(MaxPool2dSame(k, s)(x), _pool_reference(x, k, s, lambda t, d: t.amax(d)))
    torch.testing.assert_close(AvgPool2dSame(k, s)(x), _pool_reference(x, k, s, lambda t, d: t.mean(d)))


def test_avg_pool_same_border_by_hand():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]], k=2 s=2 pads one after
    got = AvgPool2dSame(2)(x)
    assert got[0, 0].tolist() == [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]]
    assert MaxPool2dSame(2)(-x)[0, 0].tolist() == [[0.0, -2.0], [-6.0, -8.0]]  # -inf pad never wins
    assert AvgPool1dSame(2)(torch.tensor([[[1.0, 2.0, 3.0]]])).tolist() == [[[1.5, 3.0]]]
    assert MaxPool3dSame(2)(torch.zeros(1, 1, 3, 4, 5)).shape == (1, 1, 2, 2, 3)


# ---------------------------------------------------------------- separable
def test_separable_conv_counts_and_reference():
    sep = SeparableConv2d(3, 256, 5, bias=False)
    assert sum(p.numel() for p in sep.parameters()) == 843
    assert sum(p.numel() for p in nn.Conv2d(3, 256, 5, bias=False).parameters()) == 19200
    sep = SeparableConv2d(4, 6, 3, stride=2, padding="same", depth_multiplier=2)
    assert sorted(sep.state_dict()) == ["depthwise.weight", "pointwise.bias", "pointwise.weight"]
    x = torch.randn(2, 4, 9, 8)
    mid = F.conv2d(F.pad(x, pad_for((9, 8), 3, 2)), sep.depthwise.weight, None, 2, groups=4)
    ref = F.conv2d(mid, sep.pointwise.weight, sep.pointwise.bias)
    torch.testing.assert_close(sep(x), ref)
    assert sep(x).shape == (2, 6, 5, 4)
    dw = DepthwiseConv2d(4, 3, padding=1)
    assert dw.weight.shape == (4, 1, 3, 3) and dw(x).shape == x.shape
    assert DepthwiseConv2d(4, 3, padding="valid")(x).shape == (2, 4, 7, 6)
    with pytest.raises(CnnkitError, match="Received: padding='full'"):
        DepthwiseConv2d(4, 3, padding="full")


def test_keep_depthwise_stops_only_the_depthwise_weight_gradients():
    assert is_depthwise(nn.Conv2d(6, 6, 3, groups=6)) and is_depthwise(DepthwiseConv2d(4, 3, depth_multiplier=2))
    assert not is_depthwise(nn.Conv2d(6, 6, 3, groups=2)) and not is_depthwise(nn.Conv2d(1, 4, 3))
    assert not is_depthwise(nn.Linear(4, 4))
    block = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 5, padding=2, groups=8), SeparableConv2d(8, 4, 3), nn.Conv2d(4, 4, 1)
    )
    assert keep_depthwise(block) == 2 and keep_depthwise(block) == 0  # the second call finds none left to keep
    kept = [block[1].weight, block[2].depthwise.weight]
    assert [p.requires_grad for p in block.parameters()].count(False) == 2 and not any(p.requires_grad for p in kept)
    block(torch.randn(2, 3, 8, 8)).square().sum().backward()
    assert all(p.grad is None for p in kept)
    # the gradient still flows through them: the layers before and after train
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters() if p.requires_grad)
    assert block[1].bias.requires_grad  # a depthwise bias trains: only the filters are kept


# ---------------------------------------------------------------- LRN, SE, activations
def test_lrn_matches_loop_and_torch_relation():
    x = torch.randn(2, 7, 3, 4)
    r, k, alpha, beta = 2, 2.0, 1e-1, 0.75  # AlexNet's k, n=5, beta; alpha enlarged to matter
    ref = torch.empty_like(x)
    for c in range(7):
        sq = (x[:, max(0, c - r) : c + r + 1] ** 2).sum(1)
        ref[:, c] = x[:, c] / (k + alpha * sq) ** beta
    lrn = LocalResponseNorm(depth_radius=r, bias=k, alpha=alpha, beta=beta)
    torch.testing.assert_close(lrn(x), ref)
    # torch's LRN divides alpha by the window size n = 2r + 1
    torch.testing.assert_close(nn.LocalResponseNorm(5, alpha=alpha * 5, beta=beta, k=k)(x), ref)


def test_lrn_depth_radius_is_half_of_gerons_r():
    """Géron sums over maps i - r/2 .. i + r/2: with his r = 2 a strong activation inhibits the maps
    immediately above and below its own, and no other; here that is depth_radius=1."""
    x = torch.ones(1, 7, 1, 1)
    strong = x.clone()
    strong[0, 3] = 10.0
    lrn = LocalResponseNorm(depth_radius=1, bias=1.0, alpha=1.0, beta=0.75)
    before, after = lrn(x).flatten(), lrn(strong).flatten()
    assert (after != before).nonzero().flatten().tolist() == [2, 3, 4]  # the map itself and its two neighbours
    assert after[2] == after[4] < before[2] / 10  # 1 / (1 + 102) ** 0.75 against 1 / 3 ** 0.75


def test_squeeze_excite_by_hand():
    se = SqueezeExcite(32)
    assert se.fc1.weight.shape == (2, 32, 1, 1) and se.fc2.weight.shape == (32, 2, 1, 1)
    assert sorted(se.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    x = torch.randn(2, 32, 5, 6)
    m = x.mean((2, 3))  # (B, C)
    h = torch.relu(m @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias)  # (B, 2)
    g = torch.sigmoid(h @ se.fc2.weight[:, :, 0, 0].T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * g[:, :, None, None])
    hs = SqueezeExcite(16, rd_channels=8, gate=nn.Hardsigmoid)
    assert hs.fc1.out_channels == 8 and isinstance(hs.gate, nn.Hardsigmoid)


def test_get_activation():
    x = torch.linspace(-3, 3, 13)
    assert isinstance(get_activation("relu"), nn.ReLU)
    torch.testing.assert_close(get_activation("swish")(x), x * torch.sigmoid(x))
    torch.testing.assert_close(get_activation("leaky_relu")(x), torch.where(x > 0, x, 0.2 * x))
    torch.testing.assert_close(get_activation("softmax")(x[None]).sum(), torch.tensor(1.0))
    assert isinstance(get_activation(None), nn.Identity) and isinstance(get_activation("linear"), nn.Identity)
    with pytest.raises(CnnkitError, match="unknown activation 'relu7'"):
        get_activation("relu7")


# ---------------------------------------------------------------- Keras-style layers, helpers
def test_keras_conv2d_dense_reshape():
    from cnnkit.layers import Conv2D, ConvNormAct, Dense, Reshape, make_divisible

    conv = Conv2D(3, 8, 3, strides=2, padding="same", activation="relu")
    x = torch.randn(2, 3, 9, 10)
    ref = torch.relu(F.conv2d(F.pad(x, pad_for((9, 10), 3, 2)), conv.weight, conv.bias, 2))
    torch.testing.assert_close(conv(x), ref)
    assert conv(x).shape == (2, 8, 5, 5) and Conv2D(3, 8, 3)(x).shape == (2, 8, 7, 8)  # "valid"
    assert torch.count_nonzero(conv.bias) == 0  # Keras: zero biases, Glorot-uniform kernels
    bound = (6 / (3 * 9 + 8 * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    dense = Dense(4, 3, activation="tanh")
    v = torch.randn(5, 4)
    torch.testing.assert_close(dense(v), torch.tanh(v @ dense.weight.T + dense.bias))
    # Keras's Reshape((2, 2, 3)) reads the flat vector as H, W, C; we return (B, C, H, W)
    flat = torch.arange(12.0)[None]
    img = Reshape((2, 2, 3))(flat)
    assert img.shape == (1, 3, 2, 2) and img[0, :, 0, 1].tolist() == [3.0, 4.0, 5.0]
    cna = ConvNormAct(3, 16, 3, 2, act_layer=nn.ReLU6)
    assert [type(m) for m in cna] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6] and cna[0].bias is None
    assert ConvNormAct(3, 16, 1, norm_layer=None, act_layer=None)[0].bias is not None
    assert [make_divisible(v) for v in (4, 20, 24, 32 * 0.75, 60)] == [8, 24, 24, 24, 64]
    assert make_divisible(576 // 4) == 144 and make_divisible(256 / 16, round_limit=0) == 16


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.25, 0.5, 0.1])
def test_dropout_keeps_one_minus_p_scaled_and_backward_is_the_mask(p):
    torch.manual_seed(0)
    x = torch.rand(400, 2500) + 0.5  # no zeros: a zero in the output means dropped
    x.requires_grad_()
    drop = Dropout(p).train()
    y = drop(x)
    kept = y != 0
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5  # 4 sigma of 1e6 draws
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / (1 - p))
    rows = kept.float().mean(1)  # no structure: every row near 1 - p
    assert rows.min() > 1 - p - 0.05 and rows.max() < 1 - p + 0.05


def test_dropout_is_nn_dropout_seeded_identity_in_eval_and_edge_rates():
    drop = Dropout(0.25)
    assert isinstance(drop, nn.Dropout) and drop.p == 0.25
    x = torch.rand(64, 300)
    torch.manual_seed(3)
    a = drop.train()(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), a)  # the default generator replays it
    assert not torch.equal(drop(x), a)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    y = x.clone()
    torch.manual_seed(3)
    assert Dropout(0.25, inplace=True).train()(y) is y and torch.equal(y, a)


def test_depthwise_convolutions_run_in_fp32_under_cpu_bf16_autocast_where_their_backward_is_faster():
    """oneDNN's bf16 input gradient of a strided depthwise convolution is several times its fp32 one:
    such layers (EfficientNet's Conv2dSame, MobileNetV3's ConvNormAct) leave bf16 autocast when that
    gradient is taken. A wider-than-3x3 one whose filters train stays in bf16 with its weight gradient
    in 3x3 pieces; 3x3 depthwise and dense convolutions, and every one without gradients, stay in
    bf16. Same state-dict keys, same values outside autocast."""
    from cnnkit.layers.bf16 import guard_bf16
    from cnnkit.layers.conv_bn_act import ConvNormAct
    from cnnkit.layers.conv_same import Conv2dSame, DepthwiseConv2d

    x = torch.randn(2, 8, 12, 12)
    wide, narrow, dense = Conv2dSame(8, 8, 5, 2, groups=8), Conv2dSame(8, 8, 3, groups=8), Conv2dSame(8, 16, 5)
    block = ConvNormAct(8, 8, 5, groups=8)
    assert isinstance(block[0], DepthwiseConv2d) and list(block.state_dict())[0] == "0.weight"
    assert type(ConvNormAct(8, 8, 3, groups=8)[0]) is nn.Conv2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = wide(x.requires_grad_())  # strided, its input takes a gradient: fp32
        assert y.dtype == torch.float32
        assert narrow(x).dtype == dense(x).dtype == torch.bfloat16
        assert wide(x.detach()).dtype == block[0](x.detach()).dtype == torch.bfloat16  # wide filters: bf16
    y.sum().backward()
    assert wide.weight.grad.dtype == torch.float32
    torch.testing.assert_close(y, wide(x))  # fp32 inside autocast = fp32 outside it
    torch.testing.assert_close(block[0](x), F.conv2d(x, block[0].weight, block[0].bias, 1, 2, groups=8))
    strided = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8))
    assert guard_bf16(strided) == 1
    x = x.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():  # no gradient: every depthwise convolution in bf16
            assert wide(x).dtype == block[0](x).dtype == strided(x).dtype == torch.bfloat16
        assert strided(x).dtype == torch.bfloat16  # the filters' gradient alone: faster in bf16
        assert strided(x.requires_grad_()).dtype == torch.float32  # a strided input gradient: fp32
        wide.requires_grad_(False)
        assert wide(x).dtype == torch.float32  # strided, its input takes a gradient
        block.requires_grad_(False)
        assert block[0](x).dtype == torch.bfloat16  # 5x5, stride 1, filters frozen: bf16


@pytest.mark.parametrize(
    "kernel, stride, bias, input_grad",
    [(5, 1, False, True), (5, 2, False, False), (7, 1, True, True), (5, 1, True, False), ((5, 3), 1, False, True)],
)
def test_wide_depthwise_bf16_gradients_are_the_convolutions(kernel, stride, bias, input_grad):
    """A wide depthwise convolution whose filters train runs in bf16 with its weight gradient as 3x3
    pieces over shifted windows: output, input and weight gradients agree with fp64 on the same
    bf16-rounded numbers to bf16's rounding, and with oneDNN's own bf16 gradients as closely."""
    from cnnkit.engine.precision import native_bf16
    from cnnkit.layers.bf16 import wide_depthwise_bf16
    from cnnkit.layers.conv_same import Conv2dSame

    torch.manual_seed(0)
    c, bf = 16, torch.bfloat16
    conv = Conv2dSame(c, c, kernel, stride, groups=c, bias=bias).to(memory_format=torch.channels_last)
    x = torch.randn(2, c, 13, 14).contiguous(memory_format=torch.channels_last).requires_grad_(input_grad)
    with torch.autocast("cpu", dtype=bf):
        padded = F.pad(x, pad_for(x.shape[2:], conv.kernel_size, conv.stride, conv.dilation, "same"))
        assert wide_depthwise_bf16(conv, padded if stride > 1 else x)
        y = conv(x)
    assert y.dtype == bf
    g = torch.randn(y.shape).to(bf)
    (y.float() * g.float()).sum().backward()

    ref = Conv2dSame(c, c, kernel, stride, groups=c, bias=bias).double()
    with torch.no_grad():
        ref.weight.copy_(conv.weight.to(bf))
        if bias:
            ref.bias.copy_(conv.bias.to(bf))
    xr = x.detach().to(bf).double().requires_grad_(input_grad)
    yr = ref(xr)
    (yr * g.double()).sum().backward()

    def close(a, b, bound=8e-3):  # bf16 keeps 8 bits: relative to the largest value
        assert (a.double() - b).abs().max() <= bound * b.abs().max()

    close(y, yr)
    close(conv.weight.grad, ref.weight.grad)
    if bias:
        close(conv.bias.grad, ref.bias.grad)
    if input_grad:  # oneDNN's own: on a CPU without bf16 instructions its emulated kernel rounds more
        close(x.grad, xr.grad, 8e-3 if native_bf16(torch.device("cpu")) else 2e-2)
    # oneDNN's own bf16 weight gradient of the wide kernel, on the same numbers
    xb = padded.detach().to(bf) if stride > 1 else x.detach().to(bf)
    wb = conv.weight.detach().to(bf)
    own = torch.ops.aten.convolution_backward(
        g.contiguous(memory_format=torch.channels_last),
        xb,
        wb,
        None,
        list(conv.stride),
        list(conv.padding),
        [1, 1],
        False,
        [0, 0],
        c,
        [False, True, False],
    )[1]
    close(conv.weight.grad, own.double())


def test_kernel_overhangs_compares_the_data_under_the_kernel_with_its_dilated_extent():
    from cnnkit.layers.bf16 import kernel_overhangs

    cases = [
        (nn.Conv3d(4, 4, 3, padding=1), (1, 4, 2, 8, 8), True),  # two frames under a 3-frame kernel
        (nn.Conv3d(4, 4, 3, padding=1), (1, 4, 3, 8, 8), False),
        (nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1)), (1, 4, 2, 8, 8), False),
        (nn.Conv2d(4, 4, 3, stride=2, padding=1), (1, 4, 8, 1), True),  # one pixel wide
        (nn.Conv2d(4, 4, 3, dilation=2, padding=2), (1, 4, 4, 4), True),  # dilated extent 5
        (nn.Conv2d(4, 4, 5, stride=2), (1, 4, 5, 9), False),  # a 1 x 3 output: the kernel slides over the input
        (nn.Conv2d(4, 4, 3, padding="same"), (1, 4, 3, 2), True),
        (nn.Conv1d(4, 4, 3, stride=2, padding=1), (4, 1), True),  # unbatched (C, L)
        (nn.ConvTranspose2d(4, 4, 4), (1, 4, 1, 1), True),  # a DCGAN's 1x1 latent to 4x4
        (nn.ConvTranspose3d(4, 4, 4, padding=2), (1, 4, 4, 4, 4), True),  # output 3^3
        (nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1), (1, 4, 4, 4), False),  # 4x4 -> 8x8
    ]
    assert [kernel_overhangs(conv, torch.zeros(shape)) for conv, shape, _ in cases] == [w for *_, w in cases]


def test_guard_bf16_runs_overhanging_convolutions_in_fp32_and_keeps_the_modules_identity():
    """The engine guards a network before it trains in bf16 on a CPU: a convolution whose kernel
    overhangs the data runs with autocast off; the others stay in bf16; the state dict, the
    parameters, ``isinstance`` and the printed class names do not change."""
    import copy
    import io

    from cnnkit.layers.bf16 import guard_bf16, plain_type
    from cnnkit.models.network import describe_modules

    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.Conv3d(8, 8, 3, padding=1), nn.ConvTranspose2d(8, 8, 4))
    params, keys, text, tree = list(net.parameters()), list(net.state_dict()), repr(net), describe_modules(net)
    assert guard_bf16(net) == 3 and guard_bf16(net) == 0
    same = nn.Sequential(Conv2dSame(8, 8, 3, stride=2), DepthwiseConv2d(8, 3, padding="same"))
    assert guard_bf16(same) == 0  # cnnkit's own layers apply the rule in their forward
    assert describe_modules(net) == tree is not None  # a run's file still describes it without code
    assert list(net.parameters()) == params and list(net.state_dict()) == keys and repr(net) == text
    assert isinstance(net[0], nn.Conv3d) and isinstance(net[2], nn.ConvTranspose2d)
    assert type(net[0]) is not nn.Conv3d and plain_type(net[0]) is nn.Conv3d and plain_type(net[1]) is nn.Conv3d
    assert type(copy.deepcopy(net)[0]) is nn.Conv3d  # copies and pickles are of the class as built
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    assert [type(m) for m in torch.load(buffer, weights_only=False)] == [nn.Conv3d, nn.Conv3d, nn.ConvTranspose2d]
    deep, shallow, latent = torch.randn(2, 1, 8, 6, 6), torch.randn(2, 1, 2, 6, 6), torch.randn(2, 8, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](deep).dtype == torch.bfloat16  # 8 frames: bf16
        assert net[0](shallow).dtype == torch.float32  # 2 frames under a 3-frame kernel: fp32
        assert net[2](latent).dtype == torch.float32
    torch.testing.assert_close(net[0](shallow), nn.functional.conv3d(shallow, net[0].weight, net[0].bias, padding=1))


@pytest.mark.parametrize(
    "conv, shape",
    [
        (lambda: nn.Conv3d(64, 128, 3, padding=1, bias=False), (4, 64, 2, 4, 4)),  # c3d_small's last block
        (lambda: nn.Conv3d(64, 64, (3, 1, 1), padding=(1, 0, 0), bias=False), (4, 64, 2, 4, 4)),  # R(2+1)D's time
        (lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), (4, 16, 4, 1)),
        (lambda: nn.Conv1d(16, 32, 5, stride=2, padding=2, bias=False), (4, 16, 1)),
        (lambda: nn.ConvTranspose3d(16, 32, 4, padding=2, bias=False), (4, 16, 4, 4, 4)),
    ],
)
def test_guarded_bf16_weight_gradients_are_the_fp32_ones(conv, shape):
    """Shapes whose bf16 weight gradient oneDNN gets wrong (relative errors 0.2 to inf, or NaN) on a
    CPU with AVX512-BF16 and no AMX: through the guard, they equal fp32's on the same bf16-rounded
    numbers. (On other CPUs the unguarded gradients are right too.)"""
    from cnnkit.layers.bf16 import guard_bf16

    torch.manual_seed(0)
    net, ref = conv(), conv()
    with torch.no_grad():
        net.weight.copy_(net.weight.bfloat16().float())
        ref.weight.copy_(net.weight)
    guard_bf16(net)
    x = torch.randn(shape).bfloat16().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    g = torch.randn(y.shape).bfloat16().float()
    y.backward(g)
    ref(x).backward(g)
    assert torch.isfinite(net.weight.grad).all()
    torch.testing.assert_close(net.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4 * ref.weight.grad.abs().max())


@pytest.mark.parametrize("shape", [(4, 64, 40, 40), (8, 64, 20, 20), (2, 6, 5, 7)])
def test_group_norm_on_a_bf16_channels_last_map_is_nn_group_norm(shape, monkeypatch):
    from cnnkit.layers import GroupNorm

    kernels = []  # the dtype each group_norm call normalises in
    real = F.group_norm
    monkeypatch.setattr(F, "group_norm", lambda x, *args, **kwargs: kernels.append(x.dtype) or real(x, *args, **kwargs))

    torch.manual_seed(0)
    groups = 16 if shape[1] == 64 else 3
    plain = nn.GroupNorm(groups, shape[1])
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    ours = GroupNorm(groups, shape[1])
    ours.load_state_dict(plain.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = plain(a), ours(b)
    assert kernels == [torch.bfloat16, torch.float32]  # ours in fp32: the mixed-type kernel is slow
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)  # the mixed-type kernel sums in fp32 and rounds once, as the fp32 one
    grad = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(b.grad, a.grad, rtol=2**-7, atol=2**-7 * a.grad.abs().max().item())
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad, rtol=1e-3, atol=1e-3)
    for other in (x.float(), x.contiguous()):  # fp32, or an NCHW map: nn.GroupNorm's own path
        assert torch.equal(ours(other), plain(other))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(
    "cls, shape", [("1d", (6, 3)), ("1d", (4, 3, 5)), ("2d", (3, 3, 4, 2)), ("3d", (2, 3, 2, 2, 3))]
)
def test_keras_batch_norm_averages_the_biased_variance_and_is_nn_batch_norm_otherwise(cls, shape, momentum):
    import cnnkit.layers as L

    torch.manual_seed(0)
    plain = getattr(nn, f"BatchNorm{cls}")(3, momentum=momentum)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    ours = getattr(L, f"BatchNorm{cls}")(3, momentum=momentum)
    ours.load_state_dict(plain.state_dict())  # the same keys: nn.BatchNorm*d's files load either way
    assert list(ours.state_dict()) == list(plain.state_dict()) and isinstance(ours, type(plain))
    dims = [d for d in range(len(shape)) if d != 1]
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for step in range(1, 4):
        x = torch.randn(shape) * step + step
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        want, got = plain(a), ours(b)
        torch.testing.assert_close(got, want)  # a training step normalises with the batch's statistics
        g = torch.randn(shape)
        want.backward(g)
        got.backward(g)
        torch.testing.assert_close(b.grad, a.grad)
        torch.testing.assert_close(ours.weight.grad, plain.weight.grad)
        f = momentum if momentum is not None else 1 / step
        mean += f * (x.double().mean(dims) - mean)  # Keras' update: the batch's biased variance
        var += f * (x.double().var(dims, unbiased=False) - var)
    torch.testing.assert_close(ours.running_mean, mean.float())
    torch.testing.assert_close(ours.running_var, var.float())
    assert ours.num_batches_tracked == plain.num_batches_tracked == 3
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(shape)
    assert torch.equal(ours.eval()(x), plain.eval()(x))  # evaluation is nn.BatchNorm*d's
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # PyTorch's own refusal
        ours.train()(torch.randn(1, 3, *[1] * (len(shape) - 2)))


def test_batch_normalization_takes_keras_momentum_and_epsilon():
    from cnnkit.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_normalization

    for shape, cls in [
        ((4,), BatchNorm1d),
        ((4, 7), BatchNorm1d),
        ((4, 5, 5), BatchNorm2d),
        ((4, 2, 5, 5), BatchNorm3d),
    ]:
        bn = batch_normalization(shape)
        assert type(bn) is cls and bn.num_features == 4 and bn.momentum == 0.01 and bn.eps == 1e-3
    bn = batch_normalization((2, 3), momentum=0.9, epsilon=1e-5, affine=False)
    assert bn.momentum == 0.1 and bn.eps == 1e-5 and bn.weight is None
