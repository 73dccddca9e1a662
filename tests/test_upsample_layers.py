"""Upsampling and atrous layers: the bilinear-initialised transposed conv against F.interpolate (the
exact convention and region where they agree), ASPP's shapes and rates, the spec keywords, and the
analyser's shapes, MACs (against FlopCounterMode) and memory (against the allocator) for them."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import cnnkit
from cnnkit.analysis.measure import measure_peak
from cnnkit.errors import CnnkitError
from cnnkit.layers import (
    ASPP,
    AtrousConv2d,
    BilinearConvTranspose2d,
    Upsample,
    aspp_rates,
    bilinear_kernel,
)
from cnnkit.models.spec import build_from_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bilinear_kernel_is_fcns_filter():
    k2 = bilinear_kernel(2)
    assert k2.shape == (4, 4)
    assert torch.allclose(k2[0], torch.tensor([1, 3, 3, 1]) / 16)
    k3 = bilinear_kernel(3)  # odd factor: odd kernel with a centre tap of 1
    assert k3.shape == (5, 5) and k3[2, 2] == 1 and torch.allclose(k3[2], torch.tensor([1, 2, 3, 2, 1]) / 3)
    with pytest.raises(CnnkitError, match="factor=0"):
        bilinear_kernel(0)


@pytest.mark.parametrize("factor", [2, 3, 4, 8, 16])
def test_bilinear_conv_transpose_is_interpolate_half_pixel_except_an_f_over_2_border(factor):
    x = torch.randn(2, 3, 7, 9)
    up = BilinearConvTranspose2d(3, factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    with torch.no_grad():
        y = up(x)  # (2, 3, 7f, 9f)
        assert y.shape == ref.shape == (2, 3, 7 * factor, 9 * factor)
        b = factor // 2
        diff = (y - ref).abs()
        assert diff[..., b : y.shape[-2] - b, b : y.shape[-1] - b].max() < 1e-5  # interior: identical
        if b:  # the border strip is exactly f // 2 wide: zeros beyond the image against clamped edges
            assert diff[..., b - 1, b:-b].min() > 0 and diff[..., b:-b, -b].min() > 0
        # with the edge pixels repeated one step out (what interpolate does) it agrees everywhere
        padded = up(F.pad(x, (1, 1, 1, 1), mode="replicate"))[..., factor:-factor, factor:-factor]
        assert (padded - ref).abs().max() < 1e-5
        # align_corners=True is another function altogether
        corners = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)
        assert (y - corners)[..., b : -b or None, b : -b or None].abs().max() > 1e-2
    assert up.weight.requires_grad and up.bias is None
    assert up.weight[0, 1].abs().sum() == 0  # channel c only into channel c


def test_upsample_module_and_atrous_conv():
    x = torch.randn(1, 2, 5, 6)
    assert torch.equal(Upsample(3, "nearest")(x), F.interpolate(x, scale_factor=3, mode="nearest"))
    assert torch.equal(Upsample(2, "bilinear")(x), F.interpolate(x, scale_factor=2, mode="bilinear"))
    with pytest.raises(CnnkitError, match="interpolation='bicubic'"):
        Upsample(2, "bicubic")
    conv = AtrousConv2d(2, 4, rate=3)
    assert conv[0].dilation == (3, 3) and conv[0].padding == (3, 3) and conv(x).shape == (1, 4, 5, 6)
    # the dilated 3x3 sees exactly the pixels 3 apart: a single impulse spreads to a 7x7 footprint of 9 taps
    probe = nn.Conv2d(1, 1, 3, padding=3, dilation=3, bias=False)
    nn.init.ones_(probe.weight)
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1
    hit = probe(impulse)[0, 0].detach().nonzero().tolist()
    assert sorted(hit) == sorted([[7 + i, 7 + j] for i in (-3, 0, 3) for j in (-3, 0, 3)])


def test_aspp_branches_rates_and_shape():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    with pytest.raises(CnnkitError, match="output_stride=4"):
        aspp_rates(4)
    aspp = ASPP(32, 16, aspp_rates(8))
    assert [b[0].dilation for b in list(aspp.branches)[1:4]] == [(12, 12), (24, 24), (36, 36)]
    assert len(aspp.branches) == 5 and aspp.project[0].in_channels == 5 * 16
    x = torch.randn(2, 32, 9, 7)
    assert aspp(x).shape == (2, 16, 9, 7)
    aspp.eval()
    pooled = aspp.branches[4](x)  # image pooling: constant over the map
    assert torch.allclose(pooled, pooled[..., :1, :1].expand_as(pooled))


def test_spec_keywords_build_these_layers():
    spec = {
        "input": "2x6x5",
        "layers": [
            {"conv2d": {"filters": 4, "kernel_size": 3, "padding": "same", "dilation_rate": 2}},
            {
                "conv2d_transpose": {
                    "filters": 4,
                    "kernel_size": 4,
                    "strides": 2,
                    "padding": "same",
                    "kernel_initializer": "bilinear",
                }
            },
            {"upsampling2d": {"size": 2, "interpolation": "bilinear"}},
            {"upsampling2d": {"size": 3}},
        ],
    }
    model, size = build_from_spec(spec)
    conv, up, bil, near = model.conv2d_1, model.conv2d_transpose_1, model.up_sampling2d_1, model.up_sampling2d_2
    assert conv.dilation == (2, 2) and near.mode == "nearest" and bil.mode == "bilinear"
    h = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        ref = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        assert (up(h) - ref)[..., 1:-1, 1:-1].abs().max() < 1e-5
        assert model(torch.randn(1, *size)).shape == (1, 4, 6 * 12, 5 * 12)
    for layer, match in [
        ({"upsampling2d": {"interpolation": "cubic"}}, "interpolation='cubic'"),
        (
            {"conv2d_transpose": {"filters": 2, "kernel_size": 3, "strides": 2, "kernel_initializer": "bilinear"}},
            "kernel_size = 2",
        ),
        ({"conv2d_transpose": {"filters": 2, "kernel_size": 4, "kernel_initializer": "he"}}, "kernel_initializer='he'"),
    ]:
        with pytest.raises(CnnkitError, match=match) as err:
            build_from_spec({"input": "2x6x5", "layers": [layer]})
        assert "\n" not in str(err.value)


class Decoder(nn.Module):
    """Every new layer in one small net: strided conv, ASPP (atrous + image pooling), bilinear-initialised
    transposed conv, nearest and bilinear upsampling, back to the input size."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=4, padding=1)  # (B, 3, 32, 28) -> (B, 16, 8, 7)
        self.aspp = ASPP(16, 8, (2, 4, 6))
        self.score = nn.Conv2d(8, 5, 1)
        self.up2 = BilinearConvTranspose2d(5, 2)  # -> (B, 5, 16, 14)
        self.near = Upsample(1, "nearest")
        self.bil = Upsample(2, "bilinear")  # -> (B, 5, 32, 28)

    def forward(self, x):
        return self.bil(self.near(self.up2(self.score(self.aspp(self.stem(x))))))


def test_analyser_shapes_macs_and_memory_are_exact():
    model, size = Decoder(), (3, 32, 28)
    s = cnnkit.summary(model, input_size=size, batch_size=2)
    rows = {r["name"]: r for r in s.layers}
    assert tuple(rows["up2"]["output_shape"]) == (5, 16, 14) and tuple(rows["bil"]["output_shape"]) == (5, 32, 28)
    assert rows["aspp.branches.1.0"]["macs"] == 2 * 8 * 8 * 7 * 16 * 9
    with FlopCounterMode(display=False) as fc:
        model.eval()(torch.randn(2, *size))
    assert s.totals["macs"] == fc.get_total_flops() // 2 == sum(r["macs"] for r in s.layers)
    for training in (False, True):
        s = cnnkit.summary(model, input_size=size, batch_size=4, optimizer="adam")
        predicted = s.memory["training_peak_bytes" if training else "inference_peak_bytes"]
        measured = measure_peak(model, (4, *size), training=training, optimizer="adam")
        assert abs(predicted - measured) / measured < 0.05, (training, predicted, measured)
