"""The fast style transfer recipe ``cnnkit style train`` runs, through the one engine."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.engine.config import use_threads
from cnnkit.errors import CnnkitError
from cnnkit.tasks.style.config import StyleTrainConfig, TransferConfig
from cnnkit.tasks.style.data import check_side, load_photos, read_photo, resize_longer
from cnnkit.tasks.style.load import build_network
from cnnkit.tasks.style.task import StyleTask
from cnnkit.tasks.style.transfer import perceptual_loss


def train(
    cfg: StyleTrainConfig,
    out=None,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    max_batches: int | None = None,
):
    """Train a transformation network for one style by ``cfg`` into the run folder ``out``.

    Johnson, Alahi & Fei-Fei 2016: the network learns to turn a photo into the style in one pass,
    by minimising the perceptual loss of its outputs on random crops of the photos in
    ``cfg.data``. The run folder is the engine's (checkpoints every epoch, exact ``resume``).

    Args:
        cfg: the settings; None fields take the defaults (:meth:`StyleTrainConfig.resolved`).
        out: the run folder; None writes nothing.
        resume: continue the run in ``out`` exactly, with its own settings (but for
            ``cfg``'s device, threads, data_dir and minutes where set, not None).
        quiet: no summary, progress bar or epoch lines.
        device: ``cpu`` | ``cuda`` (default: ``cfg.device``).
        max_batches: steps per epoch at most (smoke tests); None: every photo once per epoch.

    Returns:
        The engine's :class:`~cnnkit.engine.FitResult`; its ``model`` is the trained network.

    Raises:
        CnnkitError: a missing style image or photo folder, a bad setting, a diverging loss, or
            nothing to resume in ``out``.

    Example:
        >>> cfg = StyleTrainConfig(style="styles/udnie.jpg", data="photos")   # doctest: +SKIP
        >>> last = train(cfg, "runs/udnie").history[-1]                       # doctest: +SKIP
        >>> last["train_style"]                                               # doctest: +SKIP
    """
    from cnnkit.engine import Data, Phase, Plan, Setup, fit_run
    from cnnkit.engine.optim import make_optimizer
    from cnnkit.engine.runfolder import check_new_run, resumed_config, with_free_settings

    check_new_run(out, resume)  # before any work: a refused run leaves the folder as it was
    if resume:  # the run's own settings win, but for where, how fast and how long it computes
        cfg = with_free_settings(StyleTrainConfig.from_dict(resumed_config(out, "style")), cfg)
    cfg = cfg.resolved()
    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) < 1:
            raise CnnkitError(f"--{key.replace('_', '-')} must be a positive integer. Received: {getattr(cfg, key)}")
    if not cfg.style or not cfg.data:
        raise CnnkitError(
            f"--style and --data are required: the style image and a folder of photos. Received: "
            f"--style {cfg.style or '(none)'} --data {cfg.data or '(none)'}"
        )
    use_threads(cfg.threads)
    style = check_side(read_photo(cfg.style), "style image", cfg.style)
    h, w = resize_longer(style, cfg.style_size).shape[-2:]
    note = f" at --style-size {cfg.style_size} (from {style.shape[-1]}x{style.shape[-2]})"
    check_side(style.new_empty(1, 3, h, w), "style image", cfg.style, note, "use a larger, less elongated image")
    photos = load_photos(cfg.data, cfg.crop, cfg.photos)
    loss_cfg = TransferConfig(
        network=cfg.network,
        weights=cfg.weights,
        style_size=cfg.style_size,
        content_weight=cfg.content_weight,
        style_weight=cfg.style_weight,
        tv_weight=cfg.tv_weight,
        style_layers=cfg.style_layers,
        content_layers=cfg.content_layers,
        robust_layers=cfg.robust_layers,
    ).resolved()
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.model)
    info = {"arch": cfg.model, "style": Path(cfg.style).name, "config": cfg.to_dict(), "photos": len(photos)}
    task = StyleTask(perceptual_loss(loss_cfg, style), cfg.batch_size, cfg.crop, max_batches, info)
    plan = Plan([Phase(cfg.epochs, lambda m: Setup(make_optimizer(m, cfg)))], seed=cfg.seed, val_every=0)
    return fit_run(
        task,
        model,
        Data(photos, None),
        plan,
        cfg,
        out,
        command="cnnkit style train",
        resume=resume,
        quiet=quiet,
        device=device,
    )
