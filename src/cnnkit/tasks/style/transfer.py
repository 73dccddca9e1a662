"""Gatys et al.'s style transfer: the pixels of one image optimised against the perceptual loss.

Gatys, Ecker & Bethge 2016, "Image Style Transfer Using Convolutional Neural Networks" (CVPR).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.console import console as make_console
from cnnkit.engine.config import use_threads
from cnnkit.engine.runfolder import atomic_write_bytes
from cnnkit.errors import CnnkitError
from cnnkit.tasks.style.config import TransferConfig
from cnnkit.tasks.style.data import check_output, check_side, read_photo, resize_longer, write_image
from cnnkit.tasks.style.loss import PerceptualLoss, loss_network

CSV_COLUMNS = ["step", "loss", "content", "style", "tv", "seconds"]


@dataclass
class TransferResult:
    """What :func:`transfer` returns.

    Attributes:
        image: (1, 3, H, W) on [0, 1]: the stylised image.
        history: one row per image, the start (``step`` 0) and the image after each step:
            ``step``, ``loss`` (weighted total), ``content``, ``style``, ``tv`` (unweighted) and
            ``seconds`` since the start; the last row is ``image``'s.
        seconds: the optimisation's time (the loss network's set-up not included).
    """

    image: torch.Tensor
    history: list[dict]
    seconds: float


def perceptual_loss(cfg: TransferConfig, style: torch.Tensor) -> PerceptualLoss:
    """The loss of a resolved config against the style image (1, 3, H, W) on [0, 1], resized to ``style_size``."""
    weights = None if cfg.weights in (None, "none") else cfg.weights
    net = loss_network(cfg.network, weights)
    return PerceptualLoss(
        net,
        resize_longer(style, cfg.style_size),
        cfg.style_layers,
        cfg.content_layers,
        cfg.robust_layers,
        cfg.content_weight,
        cfg.style_weight,
        cfg.tv_weight,
    )


def transfer(
    content: torch.Tensor, style: torch.Tensor, cfg: TransferConfig | None = None, quiet: bool = True
) -> TransferResult:
    """Optimise an image so that its features match ``content`` and its Gram matrices ``style``.

    The image starts as the content photo (or noise, ``cfg.init``) resized to ``cfg.size``; each
    step is one forward and backward pass through the loss network and one L-BFGS or Adam update
    of the pixels, which are kept on [0, 1]. The losses are
    recorded for the start and for the image after every step, the returned one last.

    Args:
        content: (1, 3, H, W) on [0, 1].
        style: (1, 3, H', W') on [0, 1].
        cfg: the settings (None fields: the loss network's recipe); default :class:`TransferConfig`.
        quiet: no progress bar.

    Returns:
        A :class:`TransferResult`: the image, the losses per step, the time.

    Raises:
        CnnkitError: a bad setting, or a loss that became NaN or infinite.

    Example:
        >>> out = transfer(read_photo("photo.jpg"), read_photo("udnie.jpg"), TransferConfig(steps=50))  # doctest: +SKIP
        >>> out.image.shape                                                                        # doctest: +SKIP
        torch.Size([1, 3, 384, 512])
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cfg = (cfg or TransferConfig()).resolved()
    if cfg.threads is not None:
        use_threads(cfg.threads)
    loss_fn = perceptual_loss(cfg, style)
    photo = resize_longer(content, cfg.size)
    targets = loss_fn.content_targets(photo)
    if cfg.init == "noise":
        gen = torch.Generator().manual_seed(cfg.seed)
        start = torch.rand(photo.shape, generator=gen)
    else:
        start = photo
    x = start.clone().requires_grad_(True)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=cfg.lr, max_iter=1, history_size=50)
    else:
        opt = torch.optim.Adam([x], lr=cfg.lr)
    losses: list[dict] = []  # of the image each step starts from, then (after the loop) of the last one
    seconds = [0.0]  # when each image was made: the start, then after each step
    found: dict = {}

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss, parts = loss_fn(x, targets)
        loss.backward()
        found.update(loss=loss.detach(), **{k: v.detach() for k, v in parts.items()})
        return loss

    def check(step: int) -> None:
        if not math.isfinite(losses[-1]["loss"]):
            raise CnnkitError(
                f"the loss became {losses[-1]['loss']} at step {step}: the optimisation diverged; lower --lr "
                f"(received --lr {cfg.lr})" + (" or use --optimizer adam" if cfg.optimizer == "lbfgs" else "")
            )

    progress = Progress(
        TextColumn("style transfer"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=make_console(),
        disable=quiet,
        transient=True,
    )
    tick = time.perf_counter()
    with progress:
        bar = progress.add_task("steps", total=cfg.steps, stats="")
        for step in range(1, cfg.steps + 1):
            opt.step(closure)  # its evaluation is of the image the step starts from
            losses.append({k: float(v) for k, v in found.items()})
            check(step - 1)
            with torch.no_grad():
                x.clamp_(0, 1)
            seconds.append(time.perf_counter() - tick)
            last = losses[-1]
            progress.update(bar, advance=1, stats=f"loss {last['loss']:.4f} style {last['style']:.4f}")
    with torch.no_grad():  # the loss of the image returned, which no step evaluated
        loss, parts = loss_fn(x, targets)
        losses.append({"loss": float(loss), **{k: float(v) for k, v in parts.items()}})
    check(cfg.steps)
    history = [{"step": k, **row, "seconds": round(t, 3)} for k, (row, t) in enumerate(zip(losses, seconds))]
    return TransferResult(x.detach(), history, time.perf_counter() - tick)


def write_history_csv(path: str | Path, history: list[dict]) -> None:
    """The losses per step as CSV (:data:`CSV_COLUMNS`), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def _check_log(path: Path) -> None:
    """The loss log beside ``--out`` may replace only an earlier loss log (its header is ours).

    Raises:
        CnnkitError: ``path`` is a folder or a file cnnkit did not write: nothing is written.
    """
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "rb") as f:
            head = f.readline(4096).rstrip(b"\r\n").decode("utf-8", "replace")
    except OSError:
        head = None
    if head != ",".join(CSV_COLUMNS) or not path.is_file():
        raise CnnkitError(
            f"{path} exists and is not a loss log of `cnnkit style transfer`; it would be replaced by the losses "
            "per step: move it or choose another --out (nothing was written)"
        )


def transfer_files(
    content: str | Path, style: str | Path, out: str | Path, cfg: TransferConfig | None = None, quiet: bool = True
) -> TransferResult:
    """``cnnkit style transfer CONTENT STYLE --out OUT.png``: read, optimise, write the image and the losses.

    The image goes to ``out`` and the losses per step to ``out`` with ``.csv`` for a suffix, each
    written atomically; neither may replace an input (checked before any work).

    Args:
        content: the content photo (PNG or JPEG).
        style: the style image.
        out: the image to write (``.png``, ``.jpg``).
        cfg: the settings (default :class:`TransferConfig`).
        quiet: no progress bar.

    Returns:
        The :class:`TransferResult`.

    Raises:
        CnnkitError: a missing or unreadable image, an output that would replace an input, or a bad setting.
    """
    out = check_output(out, [content, style], (".csv",))
    _check_log(out.with_suffix(".csv"))
    cfg = (cfg or TransferConfig()).resolved()
    content_x, style_x = read_photo(content), read_photo(style)
    for x, what, path, side, flag in (
        (content_x, "content image", content, cfg.size, "--size"),
        (style_x, "style image", style, cfg.style_size, "--style-size"),
    ):
        check_side(x, what, path)
        h, w = resize_longer(x, side).shape[-2:]  # what the loss network sees
        note = f" at {flag} {side} (from {x.shape[-1]}x{x.shape[-2]})"
        check_side(x.new_empty(1, 3, h, w), what, path, note, f"use a less elongated image or a larger {flag}")
    result = transfer(content_x, style_x, cfg, quiet)
    write_image(result.image, out)
    write_history_csv(out.with_suffix(".csv"), result.history)
    return result
