"""The DCGAN recipe ``cnnkit generate train`` runs, through the one engine."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.data.datasets import load_dataset
from cnnkit.data.imageset import ImageSet
from cnnkit.engine import Data, Phase, Plan, Setup, fit_run
from cnnkit.engine.config import use_threads
from cnnkit.engine.distributed import launched
from cnnkit.engine.runfolder import check_new_run, resumed_config, with_free_settings
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


def cluster_digits(digits: ImageSet, k: int, seed: int = 0, iterations: int = 30) -> tuple[ImageSet, list[float]]:
    """The digits labelled by ``k`` k-means clusters of their pixels (Lloyd's iterations from
    k-means++'s seeded start), and each cluster's share of them: what ``--clusters`` conditions on.

    Args:
        digits: the training digits (their labels are not read).
        k: clusters.
        seed: seeds the starting centres.
        iterations: Lloyd iterations.

    Returns:
        (the digits with cluster indices as labels and ``cluster 0`` ... as class names, the shares).

    Raises:
        CnnkitError: fewer digits than clusters.
    """
    if len(digits) < k:
        raise CnnkitError(f"--clusters {k} needs at least {k} training digits; there are {len(digits)}")
    x = digits.images.flatten(1).float().div(255)  # (N, H*W)
    rng = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=rng)]
    nearest = torch.cdist(x, centres)[:, 0].square()
    for _ in range(k - 1):  # k-means++ (Arthur & Vassilvitskii 2007): far digits are likelier centres
        weights = nearest.double() if nearest.sum() > 0 else torch.ones(len(x), dtype=torch.float64)
        pick = x[torch.multinomial(weights, 1, generator=rng)]
        centres = torch.cat([centres, pick])
        nearest = torch.minimum(nearest, torch.cdist(x, pick)[:, 0].square())
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0  # an emptied cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled, None]
    assign = torch.cdist(x, centres).argmin(1)
    counts = torch.bincount(assign, minlength=k)
    names = [f"cluster {i}" for i in range(k)]
    labelled = ImageSet(digits.images, assign, names, digits.name, {**digits.meta, "clusters": k})
    return labelled, (counts.double() / len(x)).tolist()


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
        cfg: the settings (on ``resume``: the run's own are used, but for ``cfg``'s device, threads,
            data_dir and minutes where set, not None).
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
    if resume:  # the run's own settings win over the ones given, but for where, how fast and how long
        cfg = with_free_settings(GenerateConfig.from_dict(resumed_config(out, "generate")), cfg)
    if cfg.epochs < 1:  # nothing would be trained or written, and the run folder named would not exist
        raise CnnkitError(f"--epochs must be a positive integer. Received: --epochs {cfg.epochs}")
    if cfg.conditional and (cfg.codes or cfg.clusters):
        flag = f"--codes {cfg.codes}" if cfg.codes else f"--clusters {cfg.clusters}"
        raise CnnkitError(
            f"--codes and --clusters are for an unconditional generator; a conditional one is told its digit. "
            f"Received: --conditional {flag}"
        )
    if cfg.codes and cfg.clusters:
        raise CnnkitError(
            f"--codes and --clusters are two ways to give the generator a discrete choice: take one. "
            f"Received: --codes {cfg.codes} --clusters {cfg.clusters}"
        )
    if launched()[1] > 1:  # before any data is read: the two networks' game is one process's
        raise CnnkitError("generate train runs in one process (its two networks take turns); run it without torchrun")
    use_threads(cfg.threads)
    digits = load_digits(cfg)
    prior = None
    if cfg.clusters:
        digits, prior = cluster_digits(digits, cfg.clusters, cfg.seed)
    torch.manual_seed(cfg.seed)
    classes = digits.classes if cfg.conditional else []
    model = build_gan(cfg.latent_dim, cfg.width, classes, digits.image_shape[0], cfg.codes, prior)
    task = GenerateTask(
        cfg.batch_size, cfg.latent_dim, cfg.codes, prior, info={"config": cfg.to_dict(), "data": cfg.data}
    )

    def setup(m: GAN) -> Setup:
        betas = (cfg.beta1, 0.999)
        opt_g = torch.optim.Adam(m.generator.parameters(), lr=cfg.lr, betas=betas, foreach=True)
        opt_d = torch.optim.Adam(m.discriminator.parameters(), lr=cfg.lr, betas=betas, foreach=True)
        return Setup(opt_g, others=[opt_d])

    plan = Plan([Phase(cfg.epochs, setup)], seed=cfg.seed, ema=cfg.ema)

    device_of = str(next(model.parameters()).device)

    def after_epoch(epoch: int, row: dict) -> None:
        if out is not None:  # the generator just saved (the moving average when --ema is on)
            saved = load_generator(out, device=device_of)
            write_grid(fixed_grid(saved), Path(out) / SAMPLES_DIR / f"epoch_{epoch + 1:03d}.png", cols=10)

    if resume:  # a run killed after saving an epoch but before drawing its digits: drawn from the saved generator
        _draw_missing_grid(out, device_of)
    result = fit_run(
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
    if out is not None:  # a finished run resumed: its last grid, if the kill came before it
        _draw_missing_grid(out, device_of)
    return result


def _draw_missing_grid(out, device: str) -> None:
    """``samples/epoch_NNN.png`` of the epoch the saved generator holds, where it is missing."""
    from cnnkit.engine.runfolder import MODEL_FILE, read_info

    if not (Path(out) / MODEL_FILE).is_file():
        return
    epoch = read_info(out).get("epoch")
    grid = Path(out) / SAMPLES_DIR / f"epoch_{epoch:03d}.png" if isinstance(epoch, int) else None
    if grid is not None and epoch > 0 and not grid.is_file():
        write_grid(fixed_grid(load_generator(out, device=device)), grid, cols=10)
