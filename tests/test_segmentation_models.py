"""Segmentation networks: input-size logits for several backbones and odd sizes, gradients reaching
every trainable part, FCN's initialisation, DeepLab's atrous backbone, and the analyser summarising them."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnkit
from cnnkit.errors import CnnkitError
from cnnkit.layers import bilinear_kernel
from cnnkit.models.segmentation import ARCHS, UNetEncoder, create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(arch, bb) for arch in ARCHS for bb in ("resnet18", "mobilenet_v2")] + [("unet", "unet")]


@pytest.mark.parametrize("arch,backbone", CASES)
def test_logits_at_input_size_for_odd_sizes_and_gradients_flow(arch, backbone):
    net = create_segmenter(arch, backbone, num_classes=3, in_channels=1, **({"width": 8} if backbone == "unet" else {}))
    ran = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(mod)) for m in net.modules()]
    for size in ((37, 53), (64, 64)):
        x = torch.randn(2, 1, *size)
        y = net(x)
        assert y.shape == (2, 3, *size)
    for h in hooks:
        h.remove()
    y.logsumexp(1).mean().backward()
    # every parameter of a module that ran gets a gradient (a MobileNet's 1x1 head conv is never run)
    no_grad = [
        f"{n}.{pn}"
        for n, m in net.named_modules()
        if m in ran
        for pn, p in m.named_parameters(recurse=False)
        if p.grad is None
    ]
    assert not no_grad, no_grad
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("encoder."))
    encoder_grad = sum(float(p.grad.abs().sum()) for p in net.encoder.parameters() if p.grad is not None)
    assert encoder_grad > 0
    assert create_segmenter(**net.config).state_dict().keys() == net.state_dict().keys()


def test_fcn_skips_start_at_zero_and_upsampling_starts_bilinear():
    net = create_segmenter("fcn8s", "resnet18", num_classes=4)
    assert net.encoder.strides == [8, 16, 32] and len(net.up2) == 2 and len(net.score_skips) == 2
    assert all(float(s.weight.detach().abs().sum()) == 0 for s in net.score_skips)  # FCN-8s starts as FCN-32s' path
    assert torch.equal(net.up2[0].weight[2, 2], bilinear_kernel(2)) and net.up2[0].weight[2, 1].abs().sum() == 0
    assert create_segmenter("fcn32s", "resnet18", num_classes=4).encoder.strides == [32]
    assert create_segmenter("fcn16s", "resnet18", num_classes=4).encoder.strides == [16, 32]


def test_deeplab_backbone_is_atrous_at_its_output_stride():
    for os_, rates in ((16, (6, 12, 18)), (8, (12, 24, 36))):
        net = create_segmenter("deeplabv3", "resnet18", num_classes=2, output_stride=os_)
        assert net.encoder.strides == [os_] and net.aspp.rates == rates
        feats = net.encoder(torch.zeros(1, 3, 64, 64))[-1]
        assert feats.shape[-1] == 64 // os_
    with pytest.raises(CnnkitError, match="output_stride=32"):
        create_segmenter("deeplabv3", "resnet18", output_stride=32)
    with pytest.raises(CnnkitError, match="pools in its later stages"):
        create_segmenter("deeplabv3", "vgg11", output_stride=16)


def test_unet_encoder_levels_and_bad_arguments():
    enc = UNetEncoder(1, 4)
    maps = enc(torch.zeros(1, 1, 35, 20))
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 35, 20), (8, 18, 10), (16, 9, 5), (32, 5, 3), (64, 3, 2)]
    assert enc.strides == [1, 2, 4, 8, 16] and enc.channels == [4, 8, 16, 32, 64]
    for kwargs, match in [
        ({"arch": "segnet"}, "unknown segmentation architecture"),
        ({"arch": "fcn8s", "backbone": "unet"}, "needs a zoo backbone"),
        ({"arch": "unet", "num_classes": 0}, "num_classes=0"),
        ({"arch": "unet", "depth": 3}, "options are"),
    ]:
        with pytest.raises(CnnkitError, match=match):
            create_segmenter(**kwargs)


@pytest.mark.parametrize("arch", ["fcn8s", "unet", "deeplabv3"])
def test_analyser_summarises_them_exactly(arch):
    net = create_segmenter(arch, "mobilenet_v2", num_classes=3).eval()
    s = cnnkit.summary(net, input_size=(3, 48, 40), batch_size=2)
    rows = {r["name"]: r for r in s.layers}
    assert tuple(rows["(model):ops"]["output_shape"]) == (3, 48, 40)  # the final upsampling + crop
    assert "upsample_bilinear2d" in rows["(model):ops"]["type"]
    with FlopCounterMode(display=False) as fc:
        net(torch.randn(2, 3, 48, 40))
    assert s.totals["macs"] == fc.get_total_flops() // 2
    assert s.totals["params"] == sum(p.numel() for p in net.parameters())
