"""The DCGAN recipe ``cnnkit generate train`` runs, through the one engine."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.data.datasets import load_dataset
from cnnkit.data.imageset import ImageSet
from cnnkit.engine import Data, Phase, Plan, Setup, fit_run
from cnnkit.engine.config import use_threads
from cnnkit.engine.runfolder import check_new_run, resumed_config
from cnnkit.errors import CnnkitError
from cnnkit.tasks.generate.config import GenerateConfig
from cnnkit.tasks.generate.load import load_generator
from cnnkit.tasks.generate.predict import Sampler, write_grid
from cnnkit.tasks.generate.task import GAN, GenerateTask, build_gan

SAMPLES_DIR = "samples"  # the run folder's sub-folder of per-epoch grids
GRID_SEED = 1234  # the fixed noise of the per-epoch grids: the same digits, epoch after epoch


def load_digits(cfg: GenerateConfig) -> ImageSet:
    """The training digits: all of the data set's training file (its test file is held out for
    ``cnnkit generate eval``), the first ``cfg.subset`` when set."""
    digits = load_dataset(cfg.data, "trainval", data_dir=cfg.data_dir)
    if digits.image_shape[1:] != (28, 28):
        raise CnnkitError(f"DCGAN here draws 28x28 images; {cfg.data} has {digits.image_shape[1:]} ones")
    if cfg.subset:
        digits = digits.subset(torch.arange(min(cfg.subset, len(digits))))
    return digits


def fixed_grid(sampler: Sampler, seed: int = GRID_SEED) -> torch.Tensor:
    """100 digits from fixed noise: ten of each class (or code) by row for a generator that reads one.

    Args:
        sampler: the generator (left in the mode it was in).
        seed: seeds the noise.

    Returns:
        (100, C, 28, 28) images in [0, 1].
    """
    was = sampler.training
    k = sampler.net.classes  # classes or code values
    labels = torch.arange(10).repeat_interleave(10) % k if k else None
    try:
        return sampler.eval().sample(100, labels, seed)
    finally:
        sampler.train(was)


def train(cfg: GenerateConfig, out=None, resume: bool = False, quiet: bool = False, device: str | None = None):
    """Train a DCGAN by ``cfg`` into the run folder ``out``: what ``cnnkit generate train`` runs.

    After every epoch ``out/samples/epoch_NNN.png`` shows 100 digits that the saved generator draws
    from the same fixed noise (a row per class when conditional), beside the engine's files (``model.safetensors`` holds the
    generator; ``resume.safetensors`` both networks and both optimisers; ``curves.png`` both losses).

    Args:
        cfg: the settings (on ``resume``: ignored, the run's own are used).
        out: the run folder; None writes nothing.
        resume: continue the run in ``out`` exactly.
        quiet: no summary, progress bar or epoch lines.
        device: ``cpu`` | ``cuda`` (default: ``cfg.device``).

    Returns:
        The engine's :class:`~cnnkit.engine.FitResult`; its ``model`` is the :class:`GAN` pair (its
        ``generator`` the deployable sampler).

    Raises:
        CnnkitError: a bad setting, digits that cannot be found, a diverging loss, or nothing to resume.

    Example:
        >>> result = train(GenerateConfig(conditional=True), "runs/cgan")   # doctest: +SKIP
    """
    check_new_run(out, resume)
    if resume:  # the run's own settings win over the ones given
        cfg = GenerateConfig.from_dict(resumed_config(out, "generate"))
    if cfg.conditional and cfg.codes:
        raise CnnkitError(
            f"--codes is for an unconditional generator; a conditional one is told its digit. "
            f"Received: --conditional --codes {cfg.codes}"
        )
    use_threads(cfg.threads)
    digits = load_digits(cfg)
    torch.manual_seed(cfg.seed)
    classes = digits.classes if cfg.conditional else []
    model = build_gan(cfg.latent_dim, cfg.width, classes, digits.image_shape[0], cfg.codes)
    task = GenerateTask(cfg.batch_size, cfg.latent_dim, cfg.codes, info={"config": cfg.to_dict(), "data": cfg.data})

    def setup(m: GAN) -> Setup:
        betas = (cfg.beta1, 0.999)
        opt_g = torch.optim.Adam(m.generator.parameters(), lr=cfg.lr, betas=betas)
        opt_d = torch.optim.Adam(m.discriminator.parameters(), lr=cfg.lr, betas=betas)
        return Setup(opt_g, others=[opt_d])

    plan = Plan([Phase(cfg.epochs, setup)], seed=cfg.seed, ema=cfg.ema)

    def after_epoch(epoch: int, row: dict) -> None:
        if out is not None:  # the generator just saved (the moving average when --ema is on)
            saved = load_generator(out, device=str(next(model.parameters()).device))
            write_grid(fixed_grid(saved), Path(out) / SAMPLES_DIR / f"epoch_{epoch + 1:03d}.png", cols=10)

    return fit_run(
        task,
        model,
        Data(digits, None),
        plan,
        cfg,
        out,
        command="cnnkit generate train",
        resume=resume,
        quiet=quiet,
        device=device,
        on_epoch_end=after_epoch,
    )
