"""cnnkit.plots: figures with the expected axes and contents, PNGs of the expected size, atomic writes."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit import plots
from cnnkit.errors import CnnkitError
from cnnkit.explain import confusion_counts, most_confident_errors


def png_size(path):
    with Image.open(path) as im:
        im.load()  # decodes the whole file
        return im.size


def history(epochs=5, with_val=True):
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "epoch": str(e),
                "train_loss": f"{1 / e:.4f}",
                "train_acc": f"{1 - 0.5 / e:.4f}",
                "val_loss": f"{1.1 / e:.4f}" if with_val else "",
                "val_acc": f"{1 - 0.6 / e:.4f}" if with_val else "",
                "lr": f"{0.1 / e:.4f}",
                "seconds": "2.0",
            }
        )
    return rows


def test_training_curves_gridspec_figure_and_atomic_png(tmp_path):
    path = tmp_path / "curves.png"
    fig = plots.training_curves(history(), path)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy", "Learning rate  (total 10.0 s, 2.0 s/epoch)"]
    loss_ax, acc_ax, lr_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [1, 0.5, 0.3333, 0.25, 0.2], atol=1e-4)
    np.testing.assert_allclose(lr_ax.lines[0].get_xdata(), [1, 2, 3, 4, 5])
    assert png_size(path) == (1000, 650)  # 10 x 6.5 inches at 100 dpi
    assert os.listdir(tmp_path) == ["curves.png"]  # no temp file left behind
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_training_curves_without_validation_and_with_a_missing_column(tmp_path):
    rows = history(3, with_val=False)
    for row in rows:
        del row["seconds"]
    fig = plots.training_curves(rows, tmp_path / "c.png")
    assert [len(ax.lines) for ax in fig.axes] == [1, 1, 1]
    assert fig.axes[2].get_title() == "Learning rate"
    with pytest.raises(CnnkitError, match="history is empty"):
        plots.training_curves([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_training_curves_of_tasks_without_accuracy_draw_their_other_measures():
    gan = [
        {
            "epoch": e,
            "train_d_loss": 1.0 / e,
            "train_g_loss": 0.7,
            "train_d_real": 0.5 + e / 10,
            "train_d_fake": 0.5 - e / 10,
        }
        for e in (1, 2, 3)
    ]
    _, ax, _ = plots.training_curves(gan).axes
    assert ax.get_title() == "Other measures"
    assert [line.get_label() for line in ax.lines] == ["train d_real", "train d_fake"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.6, 0.7, 0.8])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.4, 0.3, 0.2])
    style = [{"epoch": 1, "train_loss": "30.2", "train_content": "0.02", "train_style": "1.49", "train_tv": "0.03"}]
    loss_ax, ax, _ = plots.training_curves(style).axes
    assert [line.get_label() for line in loss_ax.lines] == ["train"]
    assert [line.get_label() for line in ax.lines] == ["train content", "train style", "train tv"]
    np.testing.assert_allclose([float(line.get_ydata()[0]) for line in ax.lines], [0.02, 1.49, 0.03])
    _, ax, _ = plots.training_curves(history()).axes  # a classifier's accuracy panel as it is
    assert ax.get_title() == "Accuracy" and [line.get_label() for line in ax.lines] == ["train", "validation"]


def test_the_best_accuracy_label_is_the_value_the_run_prints_and_metrics_csv_holds(tmp_path):
    import csv

    from cnnkit.engine.loop import _best
    from cnnkit.engine.runfolder import write_metrics_csv

    # 96 of 153 right is 0.627451, held to 5 decimals as 0.62745; 4 digits of that would be 0.6274
    rows = [
        {"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": acc, "lr": 0.1, "seconds": 1.0}
        for e, acc in ((1, 0.5), (2, round(96 / 153, 5)), (3, 0.6))
    ]
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    with open(tmp_path / "metrics.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert cells[1]["val_acc"] == "0.62745" and _best(rows, "val_acc") == (2, 0.62745)
    for history in (rows, cells):  # as the engine draws it, and as `cnnkit plot` reads metrics.csv
        _, ax, _ = plots.training_curves(history).axes
        assert [t.get_text() for t in ax.texts] == [f"best {_best(rows, 'val_acc')[1]} (epoch 2)"]
        assert ax.texts[0].get_text() == "best 0.62745 (epoch 2)"


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    fig = plots.training_curves(history(), None)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save_figure(fig, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["curves.png"]


def test_confusion_matrix_counts_colour_bar_and_accuracy(tmp_path):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 0])
    m = confusion_counts(labels, preds, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 3]]
    fig = plots.confusion_matrix(m, ["ant", "bee", "wasp"], tmp_path / "cm.png")
    main, bar = fig.axes
    assert bar.get_ylabel() == "images"
    assert main.get_title() == "Confusion matrix (9 images, accuracy 66.67%)"
    assert [t.get_text() for t in main.texts] == ["1", "1", "0", "0", "2", "1", "1", "0", "3"]
    assert [t.get_text() for t in main.get_xticklabels()] == ["ant", "bee", "wasp"]
    with pytest.raises(CnnkitError, match="must be square"):
        plots.confusion_matrix(torch.zeros(2, 3), None)
    w, h = png_size(tmp_path / "cm.png")
    assert w > h > 400


def test_class_distribution_bars_are_the_counts(tmp_path):
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    fig = plots.class_distribution(labels, ["a", "b", "c", "d"], tmp_path / "d.png")
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [1, 2, 4, 0]
    assert "7 images, 4 classes" in ax.get_title()
    with pytest.raises(CnnkitError, match="labels must lie in 0..1"):
        plots.class_distribution(labels, ["a", "b"], None)


def test_sample_grid_titles_and_wrong_predictions_in_red(tmp_path):
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(10) % 3
    preds = labels.clone()
    preds[4] = 0
    fig = plots.sample_grid(images, labels, ["x", "y", "z"], tmp_path / "s.png", predictions=preds, max_cols=5)
    assert len(fig.axes) == 10
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[4] == "y / x" and titles[0] == "x / x"
    red = [i for i, ax in enumerate(fig.axes) if ax.title.get_color() == "tab:red"]
    assert red == [4]
    assert png_size(tmp_path / "s.png") == (800, 400)  # 5 x 1.6 in, 2 x 1.75 + 0.5 in


def test_errors_gallery_shows_the_most_confident_mistakes_first(tmp_path):
    labels = torch.tensor([0, 1, 0, 1, 0])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05], [0.4, 0.6]])
    index = most_confident_errors(labels, probs, n=16)
    assert index.tolist() == [3, 2, 4]  # wrong ones, by confidence 0.95, 0.7, 0.6
    images = torch.rand(5, 3, 16, 16)
    fig = plots.errors_gallery(images, labels, probs, ["cat", "dog"], tmp_path / "e.png", n=2)
    shown = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert shown == ["cat p=0.95\ntrue dog", "dog p=0.70\ntrue cat"]
    assert "2 of 3 wrong, out of 5" in fig.get_suptitle()


def test_feature_map_filter_pattern_and_heatmap_figures(tmp_path):
    maps = {"conv1": torch.rand(8, 12, 12), "conv2": torch.rand(40, 6, 6)}
    fig = plots.feature_map_grid(maps, tmp_path / "fm.png", max_channels=32, cols=8)
    titles = [sub.get_suptitle() for sub in fig.subfigs]
    assert titles == ["conv1  (8 x 12 x 12)", "conv2  (40 x 6 x 6, first 32 channels shown)"]
    assert len(fig.axes) == 8 + 32  # one row of 8 + four rows of 8
    assert sum(len(ax.images) for ax in fig.axes) == 8 + 32
    fig = plots.filter_grid(torch.randn(6, 4, 3, 3), tmp_path / "f.png", max_inputs=2)
    assert sum(len(ax.images) for ax in fig.axes) == 12 and fig.axes[-1].get_ylabel() == "weight"
    fig = plots.filter_grid(torch.randn(5, 3, 5, 5), tmp_path / "frgb.png")
    assert sum(len(ax.images) for ax in fig.axes) == 5 and fig.axes[0].images[0].get_array().shape == (5, 5, 3)
    fig = plots.pattern_grid(torch.randn(3, 1, 20, 20), tmp_path / "p.png", channels=[4, 7, 9], layer="conv2")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["filter 4", "filter 7", "filter 9"]
    shown = fig.axes[0].images[0].get_array()
    assert 0 <= shown.min() and shown.max() <= 1
    heat = torch.zeros(20, 30)
    heat[5, 7] = 1
    fig = plots.heatmap_overlay(torch.rand(3, 20, 30), heat, tmp_path / "h.png", title="cat")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "Grad-CAM", "overlay"]
    assert fig.axes[3].get_ylabel() == "relevance"  # the colour bar
    assert png_size(tmp_path / "h.png") == (1100, 400)
    with pytest.raises(CnnkitError, match="does not match the image"):
        plots.heatmap_overlay(torch.rand(3, 20, 30), torch.rand(10, 10))
    assert sorted(os.listdir(tmp_path)) == ["f.png", "fm.png", "frgb.png", "h.png", "p.png"]


def test_mask_panels_colours_each_class_and_checks_sizes(tmp_path):
    image = torch.zeros(1, 8, 8, dtype=torch.uint8)
    truth = torch.zeros(8, 8, dtype=torch.int64)
    truth[2:5, 2:5] = 2
    pred = truth.clone()
    pred[2, 2] = 1
    colours = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=torch.uint8)
    fig = plots.mask_panels(
        image, {"truth": truth, "model": pred}, colours, tmp_path / "m.png", classes=["bg", "one", "two"], title="t"
    )
    assert [ax.get_title() for ax in fig.axes] == ["image", "truth", "model"]
    shown = fig.axes[2].get_images()[0].get_array()
    assert shown.shape == (8, 8, 3) and tuple(shown[2, 2]) == (1.0, 0.0, 0.0) and tuple(shown[3, 3]) == (0.0, 0.0, 1.0)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bg", "one", "two"]
    assert png_size(tmp_path / "m.png")[0] > 0
    with pytest.raises(CnnkitError, match="mask 'model' has shape"):
        plots.mask_panels(image, {"model": pred[:4]}, colours)
    with pytest.raises(CnnkitError, match="beyond the 3 colours"):
        plots.mask_panels(image, {"model": pred + 1}, colours)


def test_every_written_file_has_the_mode_the_umask_asks_for(tmp_path):
    """A figure, a PNG and a run file are renamed from a 0600 temporary file: each gets 0666 less the
    umask, as open() would make it."""
    import stat

    from matplotlib.figure import Figure

    from cnnkit.engine.runfolder import atomic_write_bytes, save_png
    from cnnkit.plots import save_figure

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "metrics.csv", b"epoch\n")
        save_png(torch.zeros(4, 4, dtype=torch.uint8), tmp_path / "a.png")
        save_figure(Figure(), tmp_path / "f.png")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"metrics.csv": 0o640, "a.png": 0o640, "f.png": 0o640}, modes
