"""Figures of a dataset, a training run and a network's insides, saved as PNG files.

This is the only cnnkit module that imports matplotlib. It draws on the Agg canvas directly
(``Figure`` + ``FigureCanvasAgg``, never ``pyplot``): no global figure registry, no GUI backend,
nothing left open after a call. Every function takes plain tensors / arrays, saves atomically
(a temporary file in the destination folder, then ``os.replace``) and returns the ``Figure`` so
that callers and tests can inspect it (``len(fig.axes)``, titles, ...).
"""

from __future__ import annotations

import glob
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from cnnkit.errors import IN_RUN, CnnkitError, plain_int, temp_prefix

DPI = 100


# ----------------------------------------------------------------------------- saving


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """``fig`` drawn as PNG bytes, every text as written.

    A text's ``$`` is a dollar sign, never the start of mathtext: a class or file named ``$\\foo$``
    would otherwise fail the draw (an unknown TeX symbol). A glyph the font lacks (a CJK character, an
    emoji in a class name) is drawn as a box without a warning per glyph.
    """
    import io
    import warnings

    import matplotlib
    from matplotlib.text import Text

    FigureCanvasAgg(fig)  # attach the Agg canvas (Figure() alone has no renderer)
    buf = io.BytesIO()
    with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        for text in fig.findobj(Text):  # the texts made so far; tick labels made while drawing read the rc
            text.set_parse_math(False)
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, option: str | None = "--out") -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically: a temp file beside it, then ``os.replace``.

    The temp file is ``.<name>.<pid>.<random>.tmp``: removed on any exception, and one left by a
    killed process (its pid no longer alive, or older than :data:`STALE_SECONDS`) is removed by the
    next write of the same figure. The figure is drawn before anything is written.

    Raises:
        CnnkitError: ``path`` cannot be written (a folder, under a file, not writable, disk full);
            the message names ``option``, the flag that chose the path (``None``: the command writes
            into the run it reads). Nothing is left behind.
    """
    from cnnkit.errors import as_new_file, disk_full, is_disk_full

    path = Path(path)
    data = png_bytes(fig)
    check_output(path, option)
    _remove_stale_temps(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        as_new_file(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
        raise _cannot_write(path, exc, option) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _cannot_write(path: Path, exc: OSError, option: str | None) -> CnnkitError:
    fix = f"check the folder's permissions or choose another {option}" if option else IN_RUN
    return CnnkitError(f"cannot write {path} ({exc.strerror or exc}); {fix}")


def check_output(path: str | os.PathLike, option: str | None = "--out") -> Path:
    """Before the work: ``path`` must be a file that can be written -- not a folder, its folder
    created (if missing) and writable. Raises CnnkitError naming ``option``, the flag that chose it
    (``None``: the command writes into the run it reads)."""
    from cnnkit.errors import choose_another, output_folder, special_file

    path = Path(path)
    if path.is_dir():
        fix = f"give a file name, or choose another {option}" if option else IN_RUN
        raise CnnkitError(f"cannot write {path}: it is a folder; {fix}")
    kind = special_file(path)
    if kind:
        raise CnnkitError(f"cannot write {path}: it is {kind}, not a file; {choose_another(option)}")
    output_folder(path.parent, option)
    return path


STALE_SECONDS = 3600  # a temp file this old is left over whatever its pid says (pids are reused)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and negatives would name process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.<name>.<pid>[.<random>].tmp`` beside ``path`` left by a process that is gone."""
    prefix = temp_prefix(path)
    now = time.time()
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = plain_int(tmp.name[len(prefix) : -len(".tmp")].split(".")[0], 10)
        try:
            stale = not (pid is not None and _pid_alive(pid)) or now - tmp.stat().st_mtime > STALE_SECONDS
            if stale:
                tmp.unlink()
        except OSError:  # gone already (another writer cleaned it), or not ours to remove
            pass


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------- helpers


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _as_display(image) -> tuple[np.ndarray, str | None]:
    """A (C,H,W) or (H,W) image (uint8 0..255 or float 0..1) -> (array for imshow, cmap)."""
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        arr = image.detach().cpu().numpy().astype(np.float32) / 255.0
    else:
        arr = _numpy(image).astype(np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    if arr.ndim not in (2, 3):
        raise CnnkitError(
            f"cannot display an image of shape {tuple(arr.shape)}; expected (C,H,W) with C in (1, 3) or (H,W)"
        )
    return np.clip(arr, 0.0, 1.0), ("gray" if arr.ndim == 2 else None)


def _grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _float(value) -> float:
    """A metrics.csv cell (str, number, None or '') as float; missing -> nan."""
    if value is None or value == "":
        return math.nan
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return math.nan if math.isfinite(v) and abs(v) > MAX_DRAWN else v  # 1e308: no axis can hold it


MAX_DRAWN = 1e100  # a metrics.csv value beyond this is left out of the curves (their range would overflow)


def _crowded(names: Sequence[str], width_chars: float) -> bool:
    """Whether tick labels laid flat would overlap: their text is wider than the axis allows."""
    return sum(len(n) + 2 for n in names) > width_chars


MAX_LABEL = 40  # characters of a class name a figure shows: a longer one would squeeze the axes to nothing


def _class_name(classes: Sequence[str] | None, k: int) -> str:
    """Class ``k``'s name as a figure labels it: on one line (:func:`~cnnkit.console.shown`), at most
    :data:`MAX_LABEL` characters (a longer name cut, with "...")."""
    from cnnkit.console import shown

    name = shown(classes[k]) if classes is not None and 0 <= k < len(classes) else str(k)
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 3] + "..."


# ----------------------------------------------------------------------------- a training run


def training_curves(history: list[dict], path=None, title: str | None = None) -> Figure:
    """Loss and accuracy (train vs validation) and the learning rate per epoch, one GridSpec figure.

    Every ``train_*_loss`` / ``val_*_loss`` column (a task's own losses, e.g. a GAN's two) is drawn
    on the loss axes too. A task without accuracy gets its other ``train_*`` / ``val_*`` columns (a
    GAN's ``d_real`` and ``d_fake``, style transfer's ``content``, ``style`` and ``tv``) in the
    accuracy's place, titled "Other measures".

    Args:
        history: rows as in a run's ``metrics.csv`` (``epoch, train_loss, train_acc, val_loss,
            val_acc, lr, seconds``); values may be strings; ``val_*`` may be missing or empty.
        path: where to save the PNG (``None``: do not save).
    Returns:
        the figure: three axes (loss, accuracy or other measures, learning rate).
    """
    if not history:
        raise CnnkitError("no rows to plot: the run's history is empty; train for at least one epoch")

    def col(key):
        return np.array([_float(row.get(key)) for row in history], dtype=np.float64)

    epochs = col("epoch")
    if np.isnan(epochs).all():
        epochs = np.arange(1, len(history) + 1, dtype=np.float64)

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    gs = GridSpec(2, 2, figure=fig, height_ratios=[2.2, 1])
    ax_loss, ax_acc, ax_lr = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
    marker = "o" if len(history) <= 30 else None
    columns = dict.fromkeys(k for row in history for k in row)
    for key in columns:  # a task's own losses (a GAN's train_d_loss, train_g_loss), beside the loss
        if key.endswith("_loss") and key.startswith(("train_", "val_")) and key not in ("train_loss", "val_loss"):
            y = col(key)
            ok = ~np.isnan(y)
            if ok.any():
                split, name = key.split("_", 1)
                ax_loss.plot(
                    epochs[ok], y[ok], marker=marker, ms=3, label=f"{'validation' if split == 'val' else split} {name}"
                )
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, colour in (("train", "tab:blue"), ("val", "tab:orange")):
            y = col(f"{split}_{metric}")
            ok = ~np.isnan(y)
            if ok.any():
                name = "train" if split == "train" else "validation"
                ax.plot(epochs[ok], y[ok], marker=marker, ms=3, color=colour, label=name)
        ax.set_title(label.capitalize())
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best")
    if not ax_acc.lines:  # a task without accuracy (a GAN, style transfer): its other per-epoch numbers
        for key in columns:
            if key.startswith(("train_", "val_")) and not key.endswith("_loss") and key not in ("train_acc", "val_acc"):
                y = col(key)
                ok = ~np.isnan(y)
                if ok.any():
                    split, name = key.split("_", 1)
                    label = f"{'validation' if split == 'val' else split} {name}"
                    ax_acc.plot(epochs[ok], y[ok], marker=marker, ms=3, label=label)
        if ax_acc.lines:
            ax_acc.set_title("Other measures")
            ax_acc.set_ylabel("value")
            ax_acc.legend(loc="best")
    val_acc = col("val_acc")
    if (~np.isnan(val_acc)).any():
        best = int(np.nanargmax(val_acc))
        # the value as metrics.csv holds it (5 decimals) and the engine's best line prints it, not
        # rounded again: 96 of 153 right, held as 0.62745, would read 0.6274 at 4 digits
        ax_acc.annotate(
            f"best {float(val_acc[best])} (epoch {epochs[best]:g})",
            (epochs[best], val_acc[best]),
            xytext=(0, -18),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    lr = col("lr")
    if (~np.isnan(lr)).any():
        ax_lr.plot(epochs, lr, color="tab:green", marker=marker, ms=3)
        if np.nanmin(lr) > 0 and np.nanmax(lr) / np.nanmin(lr) > 50:
            ax_lr.set_yscale("log")
    seconds = col("seconds")
    lr_title = "Learning rate"
    if (~np.isnan(seconds)).any():
        lr_title += f"  (total {np.nansum(seconds):.1f} s, {np.nanmean(seconds):.1f} s/epoch)"
    ax_lr.set_title(lr_title)
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("lr")
    ax_lr.grid(alpha=0.3)
    huge = sum(1 for row in history for v in row.values() if _too_large(v))
    left_out = f" ({huge} value(s) beyond ±{MAX_DRAWN:g} left out)" if huge else ""
    fig.suptitle((title or "Training curves") + left_out)
    return _finish(fig, path)


def _too_large(value) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(v) and abs(v) > MAX_DRAWN


def confusion_matrix(matrix, classes: Sequence[str] | None, path=None, title: str | None = None) -> Figure:
    """A (K, K) confusion matrix of counts (rows = true class, columns = predicted) with a colour bar.

    Cells are annotated with counts when K <= 20; the title reports the accuracy (trace / total).
    """
    m = _numpy(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise CnnkitError(f"a confusion matrix must be square (K, K), got shape {tuple(m.shape)}")
    k = m.shape[0]
    names = [_class_name(classes, i) for i in range(k)]
    total = float(m.sum())
    acc = float(np.trace(m)) / total if total else math.nan
    side = min(12.0, 3.5 + 0.45 * k)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="images")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    rotate = _crowded(names, width_chars=6 * side)
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        threshold = m.max() / 2 if m.size else 0
        for i in range(k):
            for j in range(k):
                value = m[i, j]
                text = f"{value:.2f}" if np.issubdtype(m.dtype, np.floating) and value % 1 else f"{int(value)}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8 if k > 10 else 10,
                    color="white" if value > threshold else "black",
                )
    ax.set_title(title or f"Confusion matrix ({int(total)} images, accuracy {acc:.2%})")
    return _finish(fig, path)


# ----------------------------------------------------------------------------- a dataset


def class_distribution(labels, classes: Sequence[str] | None, path=None, title: str | None = None) -> Figure:
    """A countplot: how many images each class has, counts written above the bars."""
    y = _numpy(labels).astype(np.int64).ravel()
    k = len(classes) if classes is not None else (int(y.max()) + 1 if y.size else 0)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise CnnkitError(f"labels must lie in 0..{k - 1} for {k} classes, got {y.min()}..{y.max()}")
    counts = np.bincount(y, minlength=k)
    names = [_class_name(classes, i) for i in range(k)]
    fig = Figure(figsize=(max(5.0, 1.0 + 0.55 * k), 4.2), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(k), counts, color="tab:blue")
    ax.bar_label(bars, labels=[str(c) for c in counts], fontsize=8, padding=2)
    ax.set_xticks(range(k))
    rotate = _crowded(names, width_chars=7 * max(5.0, 1.0 + 0.55 * k))
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_ylim(0, max(1, counts.max(initial=0)) * 1.12)
    ax.set_title(title or f"Class distribution ({y.size} images, {k} classes)")
    return _finish(fig, path)


def sample_grid(
    images,
    labels,
    classes: Sequence[str] | None,
    path=None,
    predictions=None,
    max_cols: int = 8,
    title: str | None = None,
) -> Figure:
    """A grid of images titled with their labels; with ``predictions``, ``true / pred``, wrong in red."""
    n = len(images)
    if n == 0:
        raise CnnkitError("no images to show; pass at least one image")
    labels = _numpy(labels).astype(np.int64).ravel()
    preds = None if predictions is None else _numpy(predictions).astype(np.int64).ravel()
    rows, cols = _grid_shape(n, max_cols)
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        arr, cmap = _as_display(images[i])
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        text, colour = _class_name(classes, int(labels[i])), "black"
        if preds is not None:
            text = f"{text} / {_class_name(classes, int(preds[i]))}"
            colour = "black" if preds[i] == labels[i] else "tab:red"
        ax.set_title(text, fontsize=8, color=colour)
    fig.suptitle(title or ("Samples (true / predicted)" if preds is not None else "Samples"))
    return _finish(fig, path)


def errors_gallery(
    images, labels, probs, classes: Sequence[str] | None, path=None, n: int = 16, max_cols: int = 8
) -> Figure:
    """The ``n`` most confidently misclassified images, titled ``pred p=… / true``.

    Args:
        images: (N, C, H, W) uint8 or float images; labels: (N,) true classes;
        probs: (N, K) class probabilities (softmax of the logits).
    """
    from cnnkit.metrics.classification import most_confident_errors

    probs_t = torch.as_tensor(_numpy(probs))
    labels_t = torch.as_tensor(_numpy(labels)).long()
    index = most_confident_errors(labels_t, probs_t, n)
    fig_n = max(1, len(index))
    rows, cols = _grid_shape(fig_n, max_cols)
    fig = Figure(figsize=(1.7 * cols, 1.95 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, index.tolist()):
        arr, cmap = _as_display(images[i])
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        pred = int(probs_t[i].argmax())
        ax.set_title(
            f"{_class_name(classes, pred)} p={float(probs_t[i, pred]):.2f}\n"
            f"true {_class_name(classes, int(labels_t[i]))}",
            fontsize=8,
            color="tab:red",
        )
    wrong = int((probs_t.argmax(1) != labels_t).sum())
    if len(index) == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"Most confident mistakes ({len(index)} of {wrong} wrong, out of {len(labels_t)}): predicted p / true")
    return _finish(fig, path)


# ----------------------------------------------------------------------------- a network's insides


def _standardise(x: np.ndarray) -> np.ndarray:
    """The notes' display trick: zero mean, unit std, then 0.5 +- 0.1*std, clipped to [0,1]."""
    x = x - x.mean()
    x = x / (x.std() + 1e-5)
    return np.clip(0.5 + 0.15 * x, 0.0, 1.0)


def feature_map_grid(maps: dict, path=None, max_channels: int = 32, cols: int = 16, title: str | None = None) -> Figure:
    """Every channel of every chosen layer: one block of rows per layer titled ``name (C x h x w)``.

    Args:
        maps: ``{layer name: (C, h, w) tensor}`` as returned by :func:`cnnkit.explain.feature_maps`.
        max_channels: the first channels shown per layer (the rest are counted in the title).
    """
    if not maps:
        raise CnnkitError("no feature maps to plot; pass at least one layer")
    blocks = []
    for name, fmap in maps.items():
        arr = _numpy(fmap)
        if arr.ndim != 3:
            raise CnnkitError(f"feature map of layer {name!r} must be (C, h, w), got {tuple(arr.shape)}")
        blocks.append((name, arr))
    cols = max(1, min(cols, max(min(a.shape[0], max_channels) for _, a in blocks)))
    rows_per = [math.ceil(min(a.shape[0], max_channels) / cols) for _, a in blocks]
    fig = Figure(figsize=(0.9 * cols + 0.4, sum(0.95 * r + 0.45 for r in rows_per) + 0.4), layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[0.95 * r + 0.45 for r in rows_per], squeeze=False)
    for sub, (name, arr), rows in zip(subfigs[:, 0], blocks, rows_per):
        shown = min(arr.shape[0], max_channels)
        c, h, w = arr.shape
        more = f", first {shown} channels shown" if shown < c else ""
        sub.suptitle(f"{name}  ({c} x {h} x {w}{more})", fontsize=10)
        axes = sub.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if i < shown:
                ch = arr[i]
                # each channel on its own scale (viridis, as in the notes); a flat channel stays dark
                lo, hi = float(ch.min()), float(ch.max())
                ax.imshow(ch, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
                ax.text(0.02, 0.98, str(i), transform=ax.transAxes, fontsize=6, color="white", va="top")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def filter_grid(weights, path=None, max_filters: int = 64, max_inputs: int = 8, title: str | None = None) -> Figure:
    """The learned kernels of a conv layer, ``(out, in, kh, kw)``, on one diverging colour scale.

    RGB first layers (``in == 3``) are drawn as colour images (each filter rescaled to [0,1]);
    otherwise one row per output filter, one column per input channel (the first ``max_inputs``).
    """
    w = _numpy(weights)
    if w.ndim != 4:
        raise CnnkitError(f"conv weights must be (out, in, kh, kw), got shape {tuple(w.shape)}")
    out_c, in_c, kh, kw = w.shape
    n = min(out_c, max_filters)
    head = title or f"Filters {out_c} x {in_c} x {kh} x {kw}"
    if in_c == 3:
        rows, cols = _grid_shape(n, 16)
        fig = Figure(figsize=(0.8 * cols + 0.3, 0.85 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if i < n:
                f = w[i].transpose(1, 2, 0)
                f = (f - f.min()) / (f.max() - f.min() + 1e-12)
                ax.imshow(f, interpolation="nearest")
                ax.set_title(str(i), fontsize=7)
        fig.suptitle(head + (f", first {n}" if n < out_c else "") + " (RGB, each rescaled)")
        return _finish(fig, path)
    n = min(out_c, 16 if in_c > 1 else max_filters)
    k_in = min(in_c, max_inputs)
    if k_in == 1:
        rows, cols = _grid_shape(n, 16)
        cells = [(i, 0) for i in range(n)]
    else:
        rows, cols = n, k_in
        cells = [(i, j) for i in range(n) for j in range(k_in)]
    lim = float(np.abs(w[:n, :k_in]).max()) or 1.0
    fig = Figure(figsize=(0.75 * cols + 1.3, 0.75 * rows + 0.7), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (i, j) in zip(axes.flat, cells):
        im = ax.imshow(w[i, j], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        if k_in == 1:
            ax.set_title(str(i), fontsize=7)
        elif j == 0:
            ax.text(-0.15, 0.5, str(i), transform=ax.transAxes, fontsize=7, ha="right", va="center")
        if k_in > 1 and i == 0:
            ax.set_title(f"in {j}", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="weight")
    more = []
    if n < out_c:
        more.append(f"first {n} filters")
    if k_in < in_c:
        more.append(f"first {k_in} input channels")
    fig.suptitle(head + (f" ({', '.join(more)})" if more else ""))
    return _finish(fig, path)


def pattern_grid(
    patterns,
    path=None,
    channels: Iterable[int] | None = None,
    layer: str = "",
    max_cols: int = 8,
    title: str | None = None,
) -> Figure:
    """Inputs that maximally excite each filter (from :func:`cnnkit.explain.filter_patterns`).

    Each pattern is standardised for display as in the notes' ``deprocess_image``.
    """
    p = _numpy(patterns)
    if p.ndim != 4:
        raise CnnkitError(f"patterns must be (N, C, H, W), got shape {tuple(p.shape)}")
    chans = list(channels) if channels is not None else list(range(p.shape[0]))
    rows, cols = _grid_shape(p.shape[0], max_cols)
    fig = Figure(figsize=(1.5 * cols + 0.3, 1.6 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < p.shape[0]:
            img = _standardise(p[i])
            arr, cmap = _as_display(img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"filter {chans[i]}", fontsize=8)
    fig.suptitle(title or f"Filter patterns{' of ' + layer if layer else ''} (gradient ascent from noise)")
    return _finish(fig, path)


def heatmap_overlay(
    image, heatmap, path=None, title: str | None = None, alpha: float = 0.45, label: str = "Grad-CAM"
) -> Figure:
    """Three panels: the image, the heatmap (with colour bar), and the heatmap over the image.

    Args:
        image: (C, H, W) in [0,1] or uint8; heatmap: (H, W) in [0, 1] at the image's size.
    """
    arr, cmap = _as_display(image)
    hm = _numpy(heatmap).astype(np.float32)
    if hm.shape != arr.shape[:2]:
        raise CnnkitError(
            f"heatmap shape {tuple(hm.shape)} does not match the image's {arr.shape[:2]}; "
            f"upsample it to the image size first"
        )
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    ax_img, ax_hm, ax_ov = fig.subplots(1, 3)
    ax_img.imshow(arr, cmap=cmap, vmin=0, vmax=1)
    ax_img.set_title("image")
    im = ax_hm.imshow(hm, cmap="jet", vmin=0, vmax=1)
    ax_hm.set_title(label)
    ax_ov.imshow(arr, cmap=cmap, vmin=0, vmax=1)
    ax_ov.imshow(hm, cmap="jet", vmin=0, vmax=1, alpha=alpha)
    ax_ov.set_title("overlay")
    for ax in (ax_img, ax_hm, ax_ov):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=[ax_hm, ax_ov], shrink=0.85, label="relevance")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


# ----------------------------------------------------------------------------- segmentation


def mask_panels(
    image, masks: dict, colours, path=None, classes: Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """One image and its class maps side by side: the image, then one panel per ``masks`` entry
    (``{panel title: (H, W) class indices}``, e.g. the truth and each model's prediction), each class
    in its colour of ``colours`` ((K, 3) uint8, class k's RGB) with a legend of the classes shown.
    """
    arr, cmap = _as_display(image)
    if not masks:
        raise CnnkitError("no masks to show; pass at least one {title: (H, W) class map}")
    lut = _numpy(colours).astype(np.float32) / 255.0
    if lut.ndim != 2 or lut.shape[1] != 3:
        raise CnnkitError(f"colours must be (K, 3) RGB values, got shape {tuple(lut.shape)}")
    shown = set()
    fig = Figure(figsize=(1.9 * (len(masks) + 1), 2.6), layout="constrained")
    axes = fig.subplots(1, len(masks) + 1, squeeze=False)[0]
    axes[0].imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("image", fontsize=9)
    for ax, (name, mask) in zip(axes[1:], masks.items()):
        m = _numpy(mask).astype(np.int64)
        if m.shape != arr.shape[:2]:
            raise CnnkitError(
                f"mask {name!r} has shape {tuple(m.shape)}, the image {arr.shape[:2]}; give masks at the image's size"
            )
        if m.min(initial=0) < 0 or m.max(initial=0) >= len(lut):
            raise CnnkitError(f"mask {name!r} holds class {int(m.max())}, beyond the {len(lut)} colours given")
        shown.update(np.unique(m).tolist())
        ax.imshow(lut[m], interpolation="nearest")
        ax.set_title(str(name), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.patches import Patch

    handles = [Patch(color=tuple(lut[k]), label=_class_name(classes, k)) for k in sorted(shown)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 11), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def time_breakdown(runs: dict[str, dict[str, float]], path=None, title: str | None = None) -> Figure:
    """Where each run's seconds go: one horizontal bar per run, split into its parts' shares.

    Args:
        runs: ``{run name: {part: seconds}}`` (e.g. :class:`cnnkit.analysis.profile.StepProfiler`'s
            ``seconds`` per task); parts keep the order they first appear in.
        path: where to save the PNG (``None``: do not save).
        title: the figure's title.

    Returns:
        the figure: one axis, one bar segment per (run, part) with time.

    Raises:
        CnnkitError: no runs, or a run without any time.
    """
    if not runs:
        raise CnnkitError("no runs to plot; pass {run name: {part: seconds}}")
    parts = list(dict.fromkeys(p for r in runs.values() for p, s in r.items() if s > 0))
    names = list(runs)
    fig = Figure(figsize=(9, 0.55 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    table = colormaps["tab20"].colors  # the strong shades first, then the light ones: 20 distinct parts
    colours = [table[(2 * i) % 20 + (2 * i) // 20 % 2] for i in range(len(parts))]
    for y, name in enumerate(names):
        total = sum(runs[name].values())
        if not total > 0:
            raise CnnkitError(f"run {name!r} has no time to show: {runs[name]}")
        left = 0.0
        for part, colour in zip(parts, colours):
            share = runs[name].get(part, 0.0) / total
            if share > 0:
                ax.barh(y, share, left=left, color=colour)
                if share >= 0.06:
                    ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", fontsize=7, color="white")
                left += share
        ax.text(1.01, y, f"{total:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("share of the run's time")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=p) for p, c in zip(parts, colours)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(parts), 5), fontsize=8, frameon=False)
    ax.set_title(title or "Where the time goes")
    return _finish(fig, path)


# ----------------------------------------------------------------------------- time series


def series_cam(
    series, cam, path=None, title: str | None = None, lengths: int | None = None, channel_names=None
) -> Figure:
    """A series drawn as a line coloured by its class activation map: which stretch of the signal decided.

    One panel per channel (the CAM is shared by every channel), and the map itself below as a
    filled curve (above zero: for the class; below: against). Red is for, blue against, on a
    scale symmetric about zero.

    Args:
        series: (C, L) or (L,) values as the network took them (z-normalised).
        cam: (L,) class activation map (:func:`cnnkit.explain.class_activation_map`).
        path: PNG to write; None: only return the figure.
        title: the figure's title.
        lengths: the series' true length (its padding is not drawn); default L.
        channel_names: names of the channels (default ``channel 1``, ...).

    Returns:
        The figure (``len(fig.axes)`` = channels + 1, plus the colour bar).

    Raises:
        CnnkitError: a map whose length is not the series'.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import TwoSlopeNorm

    x = _numpy(series).astype(np.float32)
    x = x[None] if x.ndim == 1 else x
    c_map = _numpy(cam).astype(np.float32).reshape(-1)
    if c_map.shape[0] != x.shape[1]:
        raise CnnkitError(
            f"the map has {c_map.shape[0]} steps, the series {x.shape[1]}; give the map at the series' length"
        )
    n = int(lengths or x.shape[1])
    x, c_map = x[:, :n], c_map[:n]
    bound = float(np.abs(c_map).max()) or 1.0
    norm = TwoSlopeNorm(vmin=-bound, vcenter=0.0, vmax=bound)
    t = np.arange(n)
    fig = Figure(figsize=(10, 1.9 * x.shape[0] + 1.8), layout="constrained")
    axes = fig.subplots(x.shape[0] + 1, 1, sharex=True, height_ratios=[2] * x.shape[0] + [1])
    for k, ax in enumerate(axes[:-1]):
        points = np.stack([t, x[k]], 1)[:, None]  # (n, 1, 2)
        segments = np.concatenate([points[:-1], points[1:]], 1)  # (n-1, 2, 2)
        lines = LineCollection(segments, cmap="coolwarm", norm=norm, linewidth=2.5)
        lines.set_array((c_map[:-1] + c_map[1:]) / 2)
        ax.add_collection(lines)
        ax.set_xlim(0, max(n - 1, 1))
        pad = 0.1 * (float(x[k].max() - x[k].min()) or 1.0)
        ax.set_ylim(float(x[k].min()) - pad, float(x[k].max()) + pad)
        ax.set_ylabel(channel_names[k] if channel_names else f"channel {k + 1}" if x.shape[0] > 1 else "value")
    ax = axes[-1]
    ax.fill_between(t, c_map, 0, where=c_map >= 0, color="tab:red", alpha=0.6, step="mid")
    ax.fill_between(t, c_map, 0, where=c_map < 0, color="tab:blue", alpha=0.6, step="mid")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("CAM")
    ax.set_xlabel("time step")
    fig.colorbar(lines, ax=list(axes), shrink=0.8, label="class activation (for > 0 > against)")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def critical_difference(
    ranks: dict[str, float], cd: float, cliques: list[list[str]], path=None, title: str | None = None
) -> Figure:
    """A critical-difference diagram (Demšar 2006): methods on an axis of mean rank (1 = best, left), a
    bar of length ``cd`` and a thick line joining each group whose ranks do not differ significantly.

    Args:
        ranks: method -> mean rank over the data sets.
        cd: the critical difference of the Nemenyi test (in ranks).
        cliques: groups of methods not significantly different (each of two or more).
        path: PNG to write; None: only return the figure.
        title: the figure's title.

    Returns:
        The figure.
    """
    names = sorted(ranks, key=ranks.get)
    k = len(names)
    lo, hi = 1, max(k, 2)
    fig = Figure(figsize=(8, 1.6 + 0.35 * k), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(lo - 0.3, hi + 0.3)
    half = (k + 1) // 2
    ax.set_ylim(-(half * 0.6 + 0.4 + 0.15 * len(cliques)), 1.8)
    ax.axhline(0, color="black", linewidth=1)
    for r in range(lo, hi + 1):
        ax.plot([r, r], [0, 0.15], color="black", linewidth=1)
        ax.text(r, 0.3, str(r), ha="center", fontsize=9)
    ax.plot([lo, lo + cd], [1.2, 1.2], color="black", linewidth=2)
    ax.text(lo + cd / 2, 1.4, f"CD = {cd:.2f}", ha="center", fontsize=9)
    top = 0.25 + 0.15 * len(cliques)  # the labels below the clique bars
    for i, name in enumerate(names):
        left = i < half
        y = -top - (i * 0.6 if left else (k - 1 - i) * 0.6)
        x_end = lo - 0.2 if left else hi + 0.2
        ax.plot([ranks[name], ranks[name], x_end], [0, y, y], color="black", linewidth=0.8)
        ax.text(x_end, y + 0.08, f"{name} ({ranks[name]:.2f})", ha="left" if left else "right", fontsize=9)
    for j, group in enumerate(cliques):
        rs = [ranks[g] for g in group]
        y = -0.15 - 0.15 * j
        ax.plot([min(rs) - 0.03, max(rs) + 0.03], [y, y], color="tab:red", linewidth=3)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path)
