"""Style transfer: the Gram losses against hand computations, an optimisation step, the VGG19 path,
the fast network's training, exact resume and prediction, and the command's one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, list_models
from cnnkit.models.style import TransformNet
from cnnkit.models.vgg import CFGS, make_layers
from cnnkit.tasks.style import (
    StyleTrainConfig,
    TransferConfig,
    gram,
    load_stylizer,
    loss_network,
    predict_files,
    robust_gram,
    total_variation,
    train,
    transfer,
)
from cnnkit.tasks.style.loss import vgg_layer_names

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(size=48, weights="none", threads=1)  # random loss network: the mechanics, in milliseconds


def _photo(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)  # blocky: not pure noise
    Image.fromarray(np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i, (h, w) in enumerate([(40, 52), (44, 40), (48, 60), (41, 45)]):
        _photo(root / ("sub" if i % 2 else ".") / f"p{i}.png", h, w, seed=i)
    style = _photo(root.parent / "style.png", 36, 36, seed=9)
    return root, style


def test_gram_and_robust_gram_equal_a_hand_computation():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    g, r = gram(f), robust_gram(f)
    for b in range(2):
        x = f[b].reshape(3, 20).numpy()
        np.testing.assert_allclose(g[b].numpy(), x @ x.T / 20, rtol=1e-12)
        e = np.exp(x - x.max(1, keepdims=True))
        s = e / e.sum(1, keepdims=True) * 20  # softmax over the 20 positions, mean 1 per channel
        np.testing.assert_allclose(r[b].numpy(), s @ s.T / 20, rtol=1e-6)
    flat = torch.full((1, 2, 3, 3), 0.7)  # a flat channel is 1 everywhere: its robust Gram is 1
    assert torch.allclose(robust_gram(flat), torch.ones(1, 2, 2))
    x = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])  # two vertical and two horizontal pairs, one step each
    assert total_variation(x).item() == pytest.approx(0.5 + 0.5)


def test_a_style_step_lowers_the_style_loss():
    content, style = torch.rand(1, 3, 40, 48), torch.rand(1, 3, 40, 40)
    out = transfer(content, style, TransferConfig(steps=6, style_weight=100.0, **TINY))
    styles = [row["style"] for row in out.history]
    assert len(styles) == 7 and styles[-1] < 0.9 * styles[0]  # the start, then the image after each step
    assert out.history[0]["content"] == 0.0  # it starts from the content photo
    assert out.image.shape == (1, 3, 40, 48) and 0 <= out.image.min() and out.image.max() <= 1


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_losses_of_each_row_are_those_of_the_image_after_that_step(optimizer, tmp_path):
    """Row k is the image after k steps (row 0: the start); the last row is the written image's."""
    from cnnkit.tasks.style.transfer import perceptual_loss, transfer_files

    content, style = _photo(tmp_path / "c.png", 40, 48), _photo(tmp_path / "s.png", 40, 40, seed=3)
    cfg = TransferConfig(steps=3, optimizer=optimizer, **TINY)
    torch.manual_seed(0)  # the random loss network (weights none), built again below from the same seed
    out = transfer_files(content, style, tmp_path / "o.png", cfg)
    assert [r["step"] for r in out.history] == [0, 1, 2, 3]
    c = torch.from_numpy(np.array(Image.open(content))).permute(2, 0, 1)[None].float() / 255
    s = torch.from_numpy(np.array(Image.open(style))).permute(2, 0, 1)[None].float() / 255
    torch.manual_seed(0)
    loss_fn = perceptual_loss(cfg.resolved(), s)
    with torch.no_grad():
        for row, image in ((out.history[0], c), (out.history[-1], out.image)):
            total, parts = loss_fn(image, loss_fn.content_targets(c))
            assert row["loss"] == pytest.approx(float(total), rel=1e-5)
            assert row["style"] == pytest.approx(float(parts["style"]), rel=1e-5)
    last = (tmp_path / "o.csv").read_text().splitlines()[-1].split(",")
    assert int(last[0]) == 3 and float(last[1]) == pytest.approx(out.history[-1]["loss"])


def test_vgg19_reads_torchvision_weights_from_a_file_strictly(tmp_path):
    names = vgg_layer_names(make_layers(CFGS["vgg11"]))
    assert names[:4] == ["conv1_1", "relu1_1", "pool1", "conv2_1"]
    shapes, index, c = {}, 0, 3  # torchvision's vgg19 keys and shapes, from the paper's configuration E
    for v in CFGS["vgg19"]:
        if v != "M":
            shapes |= {f"features.{index}.weight": (v, c, 3, 3), f"features.{index}.bias": (v,)}
            c, index = v, index + 1  # the conv's ReLU
        index += 1
    for i, (n, m) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (1000, 4096))):
        shapes |= {f"classifier.{i}.weight": (n, m), f"classifier.{i}.bias": (n,)}
    # random weights of the right shapes, one value per output unit broadcast over the rest: a small file
    state = {
        k: (torch.rand(s[0]) * 2 / max(1, int(np.prod(s[1:])))).view(-1, *[1] * (len(s) - 1)).expand(s)
        for k, s in shapes.items()
    }
    file = tmp_path / "vgg19.pth"
    torch.save(state, file)
    assert file.stat().st_size < 1_000_000
    net = loss_network("vgg19", str(file))
    assert net.stages[0].weight[5, 2, 1, 1] == state["features.0.weight"][5, 0, 0, 0]
    cfg = TransferConfig(network="vgg19", weights=str(file), size=32, steps=2, threads=1)
    out = transfer(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), cfg)
    assert len(out.history) == 3 and all(np.isfinite(r["loss"]) for r in out.history)
    del state["classifier.6.bias"]  # torchvision's file without one key: refused, naming it
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(CnnkitError, match="classifier.6.bias"):
        loss_network("vgg19", str(tmp_path / "short.pth"))
    with pytest.raises(CnnkitError, match="needs --weights PATH"):  # never random VGG19 features unasked
        transfer(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), TransferConfig(network="vgg19", size=32))


def test_fast_network_trains_resumes_exactly_and_predicts(photos, tmp_path):
    root, style = photos
    cfg = StyleTrainConfig(
        style=str(style), data=str(root), crop=32, style_size=32, batch_size=2, epochs=2, weights="none", threads=1
    )
    kw = dict(quiet=True, max_batches=2)
    full = train(cfg, tmp_path / "full", **kw)
    assert [r["epoch"] for r in full.history] == [1, 2]
    assert all(np.isfinite(r["train_style"]) for r in full.history)

    class Stop(Exception):
        pass

    part = tmp_path / "part"
    import cnnkit.engine.loop as loop

    original = loop._save_run

    def save_then_stop(out, *args):  # the run stops after its first epoch is saved
        original(out, *args)
        raise Stop

    loop._save_run = save_then_stop
    try:
        with pytest.raises(Stop):
            train(cfg, part, **kw)
    finally:
        loop._save_run = original
    resumed = train(StyleTrainConfig(), part, resume=True, **kw)  # the run's own settings
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    net = cnnkit.load(tmp_path / "full")  # the one loader dispatches on the task
    assert net.info["task"] == "style" and net.info["arch"] == "johnson_style_slim_bn"
    photo = _photo(tmp_path / "odd.png", 37, 50)
    (written,) = predict_files(tmp_path / "full", [photo], tmp_path / "out")
    with Image.open(written) as im:
        assert im.size == (50, 37) and im.mode == "RGB"
    assert torch.equal(load_stylizer(tmp_path / "full").state_dict()["decoder.3.weight"], a["decoder.3.weight"])


def test_the_transformation_networks_are_style_models_of_the_zoo():
    assert list_models("style") == ["johnson_style", "johnson_style_slim", "johnson_style_slim_bn"]
    net = create_model("johnson_style_slim").eval()
    with torch.no_grad():
        y = net(torch.rand(1, 3, 30, 42))
    assert y.shape == (1, 3, 30, 42) and 0 < y.min() and y.max() < 1
    assert sum(p.numel() for p in create_model("johnson_style").parameters()) == 1_679_235
    slim, bn = create_model("johnson_style_slim"), create_model("johnson_style_slim_bn")
    assert [p.shape for p in slim.parameters()] == [p.shape for p in bn.parameters()]  # the norms' scales and shifts
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 15  # 3 + 2 x 5 + 2 ConvLayers
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in slim.modules())
    # untrained, a network returns its input (clamped to [1e-3, 1 - 1e-3] by the logit), at any size
    x = torch.rand(2, 3, 30, 42)
    with torch.no_grad():
        for name in ("johnson_style", "johnson_style_slim", "johnson_style_slim_bn"):
            out = create_model(name).eval()(x)
            assert (out - x.clamp(1e-3, 1 - 1e-3)).abs().max() < 1e-5
    with pytest.raises(CnnkitError, match="not class scores"):
        create_model("johnson_style", num_classes=10)
    with pytest.raises(CnnkitError, match="norm instance or batch"):
        TransformNet(norm="group")


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("cnnkit style: error:")
    return err


def test_bad_inputs_are_one_line_errors_and_write_nothing(photos, tmp_path, capsys):
    root, style = photos
    content = root / "p0.png"
    before = content.read_bytes()
    fast = ["--steps", "1", "--size", "32", "--weights", "none", "--quiet", "--threads", "1"]
    assert "would replace your input" in _one_line_error(
        capsys, ["style", "transfer", str(content), str(style), "--out", str(content), *fast]
    )
    assert content.read_bytes() == before
    out = tmp_path / "o.png"
    assert "image not found" in _one_line_error(
        capsys, ["style", "transfer", str(tmp_path / "missing.jpg"), str(style), "--out", str(out), *fast]
    )
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert "cannot read" in _one_line_error(
        capsys, ["style", "transfer", str(text), str(style), "--out", str(out), *fast]
    )
    assert "--out must name" in _one_line_error(
        capsys, ["style", "transfer", str(content), str(style), "--out", str(tmp_path / "o.gif"), *fast]
    )
    assert "image not found" in _one_line_error(
        capsys, ["style", "predict", str(tmp_path), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "d")]
    )
    assert "--style and --data are required" in _one_line_error(
        capsys, ["style", "train", "--style", str(style), "--out", str(tmp_path / "run")]
    )
    assert (
        not out.exists()
        and not out.with_suffix(".csv").exists()
        and not (tmp_path / "run").exists()
        and not (tmp_path / "d").exists()
    )

    assert main(["style", "transfer", str(content), str(style), "--out", str(out), *fast]) == 0
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "step,loss,content,style,tv,seconds" and len(rows) == 3  # step 0 and step 1
    with Image.open(out) as im:
        assert im.size == (32, 25)  # the content's 52x40 with its longer side at --size
    assert capsys.readouterr().out == ""  # --quiet: no progress and no final line
    assert (
        main(["style", "transfer", str(content), str(style), "--out", str(out), *(a for a in fast if a != "--quiet")])
        == 0
    )
    assert "done: 1 steps" in capsys.readouterr().out


def test_predict_names_a_folder_or_a_pipe_for_what_it_is_before_any_output(photos, tmp_path, capsys):
    import os

    root, _ = photos
    good, pipe = root / "p0.png", tmp_path / "pipe.png"
    os.mkfifo(pipe)  # reading it would block: refused from its type alone
    out = tmp_path / "d"
    for bad, words in ((root / "sub", "is a folder, not an image file"), (pipe, "is not a regular file")):
        err = _one_line_error(capsys, ["style", "predict", str(tmp_path), str(good), str(bad), "--out", str(out)])
        assert words in err and "not found" not in err
    assert not out.exists()


def test_predict_refuses_an_out_folder_it_cannot_write_before_any_photo(photos, tmp_path, capsys, monkeypatch):
    from importlib import import_module

    def ran(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(import_module("cnnkit.tasks.style.predict"), "load_stylizer", ran)
    root, _ = photos
    (tmp_path / "f").write_text("a file")
    err = _one_line_error(
        capsys, ["style", "predict", str(tmp_path), str(root / "p0.png"), "--out", str(tmp_path / "f" / "d")]
    )
    assert err.endswith(
        f"cannot create the folder {tmp_path / 'f' / 'd'} ({tmp_path / 'f'} is a file); choose another --out"
    ), err


def test_sizes_that_would_fill_the_memory_are_refused_before_any_work(photos, tmp_path, capsys, monkeypatch):
    from importlib import import_module

    style_predict = import_module("cnnkit.tasks.style.predict")  # the modules, not the package's functions
    style_transfer = import_module("cnnkit.tasks.style.transfer")

    def ran(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(style_transfer, "transfer_files", ran)
    monkeypatch.setattr(style_predict, "load_stylizer", ran)
    root, style = photos
    content, out = root / "p0.png", tmp_path / "o.png"
    for flag in ("--size", "--style-size"):
        argv = ["style", "transfer", str(content), str(style), "--out", str(out), flag, "20000", "--weights", "none"]
        assert f"{flag} must be an integer from 16 to 2,048; received 20000" in _one_line_error(capsys, argv)
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 4000)).save(big)  # 20,000,000 pixels, a header the check reads
    argv = ["style", "predict", str(tmp_path), str(big), "--out", str(tmp_path / "d")]
    assert (
        "is 5000x4000 = 20,000,000 pixels; at most 16,777,216 are run through the network at once: pass --max-side"
        in (_one_line_error(capsys, argv))
    )
    style_predict._check_photo_size(big, 2048)  # shrunk to 2048x1638 by --max-side: accepted
    assert not out.exists() and not (tmp_path / "d").exists()


def test_the_fast_network_trains_on_plain_gram_matrices_and_the_optimisation_keeps_the_robust_ones():
    fast = StyleTrainConfig(style="s.png", data="photos").resolved()
    assert (fast.model, fast.crop, fast.robust_layers, fast.style_weight) == ("johnson_style_slim_bn", 128, (), 20.0)
    assert fast.style_layers == TransferConfig().resolved().style_layers
    assert TransferConfig().resolved().robust_layers == ("blocks.2", "blocks.3")
    assert TransferConfig().resolved().style_weight == 100.0
    mine = StyleTrainConfig(style="s.png", data="photos", robust_layers=("blocks.3",), style_weight=50.0).resolved()
    assert (mine.robust_layers, mine.style_weight) == (("blocks.3",), 50.0)


def test_an_out_whose_folder_cannot_be_made_is_refused_before_any_work(tmp_path):
    """`style transfer --out FILE/x.png`: said at once, not after the optimisation."""
    from cnnkit.tasks.style.transfer import transfer_files

    afile = tmp_path / "afile"
    afile.write_text("hi")
    with pytest.raises(CnnkitError, match=r"cannot create the folder .*afile .*choose another --out"):
        transfer_files(tmp_path / "missing_content.png", tmp_path / "missing_style.png", afile / "x.png")
    assert afile.read_text() == "hi"
