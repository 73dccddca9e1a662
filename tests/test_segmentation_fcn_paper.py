"""FCN on VGG as Long et al. built it (``fcn_paper``, ``--fcn-paper``): fc6 and fc7 as convolutions with
ImageNet's weights, conv7 scored at stride 32, skips on pool4 and pool3, 134 M parameters on VGG16;
stored in the run, so runs without the field rebuild as they were trained. The 134 M-parameter
networks are built on the meta device except in the tests marked slow."""

import json

import pytest
import torch
import torch.nn as nn
from test_segmentation_cli import make_folder
from torch.utils.flop_counter import FlopCounterMode

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model
from cnnkit.models.features import create_features
from cnnkit.models.meta import on_meta
from cnnkit.models.segmentation import create_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(arch, backbone="vgg16", num_classes=21, **kwargs):
    with on_meta():
        return create_segmenter(arch, backbone, num_classes, **kwargs)


def test_conv7_is_scored_and_the_skips_tap_pool4_and_pool3():
    net = _meta("fcn8s", fcn_paper=True)
    fx = net.encoder
    assert fx.strides == [8, 16, 32] and fx.channels == [256, 512, 4096]
    assert [i["module"] for i in fx.feature_info] == ["features.16", "features.23", "classifier.5"]
    pools = [f"features.{n}" for n, m in fx.backbone.features.named_children() if isinstance(m, nn.MaxPool2d)]
    assert pools[2:4] == ["features.16", "features.23"]  # the third and fourth max pool: pool3, pool4
    head = fx.backbone.classifier  # fc6, relu6, drop6, fc7, relu7, drop7 (drop7 is what score_fr reads)
    assert [type(m) for m in head] == [nn.Conv2d, nn.ReLU, nn.Dropout] * 2
    assert (head[0].in_channels, head[0].out_channels, head[0].kernel_size, head[0].padding) == (
        512,
        4096,
        (7, 7),
        (3, 3),
    )
    assert (head[3].in_channels, head[3].out_channels, head[3].kernel_size, head[3].padding) == (
        4096,
        4096,
        (1, 1),
        (0, 0),
    )
    assert head[2].p == head[5].p == 0.5
    maps = fx(torch.zeros(1, 3, 64, 96, device="meta"))
    assert [tuple(m.shape[1:]) for m in maps] == [(256, 8, 12), (512, 4, 6), (4096, 2, 3)]
    assert net.score.in_channels == 4096 and [s.in_channels for s in net.score_skips] == [512, 256]
    assert net(torch.zeros(1, 3, 64, 96, device="meta")).shape == (1, 21, 64, 96)
    assert [i["module"] for i in _meta("fcn16s", fcn_paper=True).encoder.feature_info] == [
        "features.23",
        "classifier.5",
    ]
    assert [i["module"] for i in _meta("fcn32s", fcn_paper=True).encoder.feature_info] == ["classifier.5"]
    # the default: the last module at each stride (relu4_3, relu5_3, pool5), no fc6 or fc7
    plain = _meta("fcn8s").encoder
    assert [i["module"] for i in plain.feature_info] == ["features.22", "features.29", "features.30"]
    assert plain.channels == [512, 512, 512] and not hasattr(plain.backbone, "classifier")


def _conv(c_in, c_out, k):
    """Parameters of a k x k convolution with a bias."""
    return c_in * c_out * k * k + c_out


def test_parameter_counts_on_vgg16_for_21_classes_by_hand():
    vgg16 = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    vgg16 += [(256, 512)] + [(512, 512)] * 5
    trunk = sum(_conv(i, o, 3) for i, o in vgg16)  # conv1_1 .. conv5_3
    fc6, fc7 = _conv(512, 4096, 7), _conv(4096, 4096, 1)  # fc6 as a 7x7 conv on pool5, fc7 as a 1x1
    score_fr, score_pool4, score_pool3 = _conv(4096, 21, 1), _conv(512, 21, 1), _conv(256, 21, 1)
    upscore2 = 21 * 21 * 4 * 4  # a 2x transposed conv (kernel 4, no bias); the last upsampling has none
    assert (trunk, fc6, fc7) == (14_714_688, 102_764_544, 16_781_312)
    assert (score_fr, score_pool4, score_pool3, upscore2) == (86_037, 10_773, 5_397, 7_056)
    expected = {
        "fcn32s": trunk + fc6 + fc7 + score_fr,  # 134,346,581
        "fcn16s": trunk + fc6 + fc7 + score_fr + score_pool4 + upscore2,  # 134,364,410
        "fcn8s": trunk + fc6 + fc7 + score_fr + score_pool4 + score_pool3 + 2 * upscore2,  # 134,376,863
    }
    for arch, count in expected.items():
        net = _meta(arch, fcn_paper=True)
        assert sum(p.numel() for p in net.parameters()) == count, arch
        assert round(count / 1e6) == 134  # the paper's Table 1
    assert sum(p.numel() for p in _meta("fcn32s").parameters()) == trunk + _conv(512, 21, 1)  # the default


def test_the_analyser_summarises_it_exactly(tmp_path, capsys):
    net = _meta("fcn8s", fcn_paper=True).eval()
    s = cnnkit.summary(net, input_size=(3, 64, 64), batch_size=2)
    rows = {r["name"]: r for r in s.layers}
    assert tuple(rows["encoder.backbone.classifier.0"]["output_shape"]) == (4096, 2, 2)
    assert rows["encoder.backbone.classifier.0"]["params"] == 102_764_544
    with FlopCounterMode(display=False) as fc:
        net(torch.zeros(2, 3, 64, 64, device="meta"))
    assert s.totals["macs"] == fc.get_total_flops() // 2
    assert s.totals["params"] == 134_376_863
    factory = tmp_path / "net.py"  # `cnnkit summary FILE.py:FUNCTION`
    factory.write_text(
        "from cnnkit.models.meta import on_meta\nfrom cnnkit.models.segmentation import create_segmenter\n\n\n"
        "def fcn():\n    with on_meta():\n        return create_segmenter('fcn8s', 'vgg16', 21, fcn_paper=True)\n"
    )
    capsys.readouterr()
    assert main(["summary", f"{factory}:fcn", "--input", "3x64x64", "--batch-size", "2", "--format", "json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert (totals["params"], totals["macs"]) == (134_376_863, s.totals["macs"])


def test_a_run_saved_without_the_field_rebuilds_as_it_was_trained(tmp_path):
    """A run's metadata from before the field holds no ``fcn_paper``: it loads as the pool5 network."""
    from cnnkit.engine.runfolder import FORMAT, save_model
    from cnnkit.tasks.segment.load import load_segmenter
    from cnnkit.tasks.segment.predict import Segmenter
    from cnnkit.tasks.segment.task import SegmentTask

    net = _meta("fcn8s", "vgg11", 2).to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    model = Segmenter(net, [0.5] * 3, [0.2] * 3, ["background", "thing"]).eval()
    info = {"format": FORMAT, **SegmentTask(info={"data": "photos"}).describe(model)}
    assert info["segmenter"]["fcn_paper"] is False
    del info["segmenter"]["fcn_paper"]
    save_model(tmp_path / "model.safetensors", model, info)
    back = load_segmenter(tmp_path)
    assert [i["module"] for i in back.net.encoder.feature_info] == ["features.14", "features.19", "features.20"]
    assert back.net.config["fcn_paper"] is False
    x = torch.rand(2, 3, 64, 40)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_refused_on_other_architectures_and_backbones():
    accepted = "it takes --arch fcn32s, fcn16s, fcn8s with --model vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16"
    for arch, backbone in [("fcn8s", "resnet18"), ("unet", "vgg16"), ("deeplabv3", "vgg16"), ("fcn8s", "unet")]:
        with pytest.raises(CnnkitError, match="--fcn-paper builds Long et al.'s FCN on VGG") as err:
            create_segmenter(arch, backbone, fcn_paper=True)
        assert accepted in str(err.value) and f"received --arch {arch} --model {backbone}" in str(err.value)
    with pytest.raises(CnnkitError, match="fcn_paper must be True or False"):
        create_segmenter("fcn8s", "vgg16", fcn_paper="yes")
    with pytest.raises(CnnkitError, match="is not a VGG: give vgg11"):
        create_features("resnet18", out_strides=(8, 16, 32), fc_convs=True)
    with pytest.raises(CnnkitError, match="does not return: add 32"):
        create_features("vgg11", out_strides=(8, 16), fc_convs=True)
    with pytest.raises(CnnkitError, match="taps must be 'last' or 'pool'"):
        create_features("vgg11", taps="first")


@pytest.mark.parametrize(
    "argv,received",
    [
        ([], "--arch unet --model efficientnet_lite0"),  # an image folder's recipe
        (["--arch", "fcn8s", "--model", "resnet18"], "--arch fcn8s --model resnet18"),
        (["--arch", "deeplabv3", "--model", "vgg16"], "--arch deeplabv3 --model vgg16"),
    ],
)
def test_the_command_line_refuses_it_in_one_line_and_writes_nothing(tmp_path, capsys, argv, received):
    data = make_folder(tmp_path / "data", n=4)
    code = main(["segment", "train", "--data", str(data), *argv, "--fcn-paper", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "--fcn-paper builds Long et al.'s FCN on VGG: it takes --arch fcn32s, fcn16s, fcn8s" in err
    assert f"received {received}" in err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_imagenet_fc6_and_fc7_carry_over(tmp_path):
    """A VGG weight file (random numbers standing in for ImageNet's) gives conv7: at 224 px its middle
    cell is the classifier's 4096 pre-logits features (fc6's 3-px padding reaches no further)."""
    from safetensors.torch import save_file

    with on_meta():  # built without its initialisation: every weight is drawn below
        zoo = create_model("vgg11").eval()
    zoo.to_empty(device="cpu")
    assert not list(zoo.buffers())
    with torch.no_grad():
        for p in zoo.parameters():
            p.normal_(0, 0.02)
    path = tmp_path / "vgg11.safetensors"
    save_file({k: v.contiguous() for k, v in zoo.state_dict().items()}, path)
    net = create_segmenter("fcn32s", "vgg11", 21, weights=str(path), fcn_paper=True).eval()
    whole = zoo.state_dict()
    kept = net.encoder.backbone.state_dict()
    assert set(kept) == set(whole) - {"classifier.6.weight", "classifier.6.bias"}  # the 1000 ImageNet logits go
    assert all(torch.equal(v.flatten(), whole[k].flatten()) for k, v in kept.items())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        conv7 = net.encoder(x)[-1]
        pre_logits = zoo.forward_head(zoo.forward_features(x), pre_logits=True)
    assert conv7.shape == (1, 4096, 7, 7) and pre_logits.abs().max() > 0.1
    torch.testing.assert_close(conv7[0, :, 3, 3], pre_logits[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_saved_run_rebuilds_the_paper_network(tmp_path):
    """A run of FCN-8s on VGG11 with the field (129 M parameters) loads as the same network: the
    stored field rebuilds conv7 and the pool taps, and gives the same logits."""
    from cnnkit.engine.runfolder import FORMAT, save_model
    from cnnkit.tasks.segment.load import load_segmenter
    from cnnkit.tasks.segment.predict import Segmenter
    from cnnkit.tasks.segment.task import SegmentTask

    net = _meta("fcn8s", "vgg11", 2, fcn_paper=True).to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.01)
    model = Segmenter(net, [0.5] * 3, [0.2] * 3, ["background", "thing"]).eval()
    save_model(
        tmp_path / "model.safetensors",
        model,
        {"format": FORMAT, **SegmentTask(info={"data": "photos"}).describe(model)},
    )
    back = load_segmenter(tmp_path)
    assert back.info["segmenter"]["fcn_paper"] is True
    assert [i["module"] for i in back.net.encoder.feature_info] == ["features.10", "features.15", "classifier.5"]
    # vgg11's convolutions 9,220,480 + fc6 102,764,544 + fc7 16,781,312 + scores for 2 classes 8,194 + 1,026 + 514
    # + two 2x transposed convs 2 * 2 * 4 * 4 * 2 = 128
    count = 9_220_480 + 102_764_544 + 16_781_312 + 8_194 + 1_026 + 514 + 128
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in model.parameters()) == count
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
