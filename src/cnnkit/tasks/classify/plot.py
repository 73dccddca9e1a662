"""The figures of a training run: curves from ``metrics.csv``; confusion matrix and mistakes when the
run's checkpoint and its dataset can be loaded."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from cnnkit.errors import CnnkitError, short_error
from cnnkit.metrics.classification import confusion_counts


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise CnnkitError(f"no metrics.csv in {run}; give a run folder written by `cnnkit train`")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CnnkitError(
            f"{path} is not readable text ({str(exc)[:80]}); the file is damaged: restore it from a copy, "
            "or plot another run"
        ) from None
    if not rows:
        raise CnnkitError(f"{path} has no epochs yet; plot it after the first epoch")
    return rows


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Class probabilities (N, K) for uint8 images (N, C, H, W), in batches."""
    out = [
        model(images[i : i + batch_size].float() / 255).float().softmax(1)
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out)


def plot_run(
    run: str | Path,
    data_dir: str | None = None,
    split: str | None = None,
    max_images: int = 10000,
    trust_code: bool = False,
    factory: str | None = None,
) -> tuple[list[Path], list[str]]:
    """Write ``curves.png`` and, when possible, ``confusion_<split>.png`` and ``errors_<split>.png``.

    Returns:
        (files written, notes on what could not be drawn and why).
    """
    from cnnkit import plots

    run = Path(run)
    written = [
        plots.save_figure(
            plots.training_curves(read_metrics(run), title=f"Training curves: {run.name}"),
            run / "curves.png",
            option=None,  # drawn into the run it reads: no flag chose the path
        )
    ]
    notes: list[str] = []
    try:
        from cnnkit.data.imagefolder import left_out_note
        from cnnkit.tasks.classify.evaluate import run_images
        from cnnkit.tasks.classify.load import load_classifier

        model = load_classifier(run, trust_code=trust_code, factory=factory)
        info = getattr(model, "info", {}) or {}
        name = info.get("dataset", {}).get("name")
        if not name or not isinstance(name, str):
            raise CnnkitError("the checkpoint does not name its dataset")
        data_dir = data_dir or info.get("config", {}).get("data_dir")
        if not isinstance(data_dir, (str, type(None))):  # edited metadata: a note, as any other unreadable data
            raise CnnkitError(f"the checkpoint's data_dir is {str(data_dir)[:40]!r}, not a folder name")
        data, errors = None, []
        for s in [split] if split else ["test", "val"]:
            try:  # the images eval scores: the run's own split, labelled by its classes
                data = run_images(model, run, s, data_dir=data_dir, download=False)
                break
            except CnnkitError as exc:
                errors.append(str(exc))
        if data is None:  # the same reason for both splits (a missing folder) is said once
            raise CnnkitError("; ".join(dict.fromkeys(errors)))
    except (CnnkitError, ImportError, OSError, KeyError) as exc:  # an OSError quotes a path of any length
        notes.append(f"curves only: no confusion matrix or mistakes ({short_error(exc)})")
        return written, notes
    left_out = left_out_note(data)
    if left_out:  # a class folder the run does not know: its images are not scored
        notes.append(left_out.removeprefix("note: "))
    if len(data) > max_images:
        data = data.subset(torch.arange(max_images))
        notes.append(f"confusion matrix and mistakes on the first {max_images} images of {data.name}")
    probs = predict_probs(model, data.images)
    matrix = confusion_counts(data.labels, probs.argmax(1), len(data.classes))
    tag = data.name.split("/")[-1] or "test"
    written.append(
        plots.save_figure(
            plots.confusion_matrix(matrix, data.classes, title=None), run / f"confusion_{tag}.png", option=None
        )
    )
    written.append(
        plots.save_figure(
            plots.errors_gallery(data.images, data.labels, probs, data.classes), run / f"errors_{tag}.png", option=None
        )
    )
    return written, notes
