"""Measured quality of a generator: the MNIST score and a Frechet distance, with a trained classifier.

- MNIST score: the Inception score (Salimans et al. 2016, https://arxiv.org/abs/1606.03498),
  ``exp(E_x KL(p(y|x) || p(y)))``, computed with a cnnkit-trained digit classifier instead of
  Inception: 1 when every image looks alike or unsure, the number of classes (10) when each is
  confidently one digit and the digits are spread evenly.
- Frechet distance (Heusel et al. 2017, FID, https://arxiv.org/abs/1706.08500) between Gaussians
  fitted to the classifier's penultimate features of the images and of real training digits.

Each figure is reported beside the same figure for real held-out test digits, measured in the same
call with the same classifier: the yardstick of what "real" scores.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from cnnkit.data.datasets import load_dataset
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.load import load_classifier
from cnnkit.tasks.generate.load import load_generator


def mnist_score(probs: torch.Tensor) -> float:
    """The Inception score of class probabilities: ``exp(mean_i KL(p(y|x_i) || p(y)))``.

    Args:
        probs: (N, K) class probabilities of N images (rows sum to 1).

    Returns:
        A number from 1 (no information) to K (confident and evenly spread over the K classes).

    Example:
        >>> mnist_score(torch.eye(10))
        10.0
    """
    p = probs.double()
    marginal = p.mean(0, keepdim=True)  # p(y), (1, K)
    kl = (torch.xlogy(p, p) - torch.xlogy(p, marginal)).sum(1)  # (N,), with 0 log 0 = 0 (a class no image has)
    return round(float(kl.mean().exp()), 10)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two sets of feature vectors:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    The matrix square root's trace is that of ``(S_a^(1/2) S_b S_a^(1/2))^(1/2)``, a symmetric
    matrix whose eigenvalues give it exactly (float64 throughout).

    Args:
        a: (N, D) features of one set.
        b: (M, D) features of the other.

    Returns:
        The distance (0 for a set against itself).

    Raises:
        CnnkitError: sets of fewer than two vectors or of different widths.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise CnnkitError(
            f"the Frechet distance needs two (N, D) sets of at least 2 vectors each; received "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T  # S_a^(1/2)
    middle = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * middle
    return max(float(distance), 0.0)


@torch.no_grad()
def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's probabilities and penultimate features (the input of its last linear layer).

    Args:
        classifier: a cnnkit classifier: (N, C, H, W) in [0, 1] -> logits.
        images: (N, C, H, W) floats in [0, 1].
        batch_size: images per forward pass.

    Returns:
        ``(probs (N, K), features (N, D))`` on the CPU.

    Raises:
        CnnkitError: a classifier without a final linear layer (no feature space to compare in).
    """
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CnnkitError("the --classifier has no linear last layer whose input could serve as features")
    seen: list[torch.Tensor] = []
    hook = linears[-1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].flatten(1).float().cpu()))
    probs = []
    was = classifier.training
    classifier.eval()
    try:
        with classifier.without_tta() if hasattr(classifier, "without_tta") else contextlib.nullcontext():
            for i in range(0, len(images), batch_size):
                probs.append(classifier(images[i : i + batch_size]).float().softmax(1).cpu())
    finally:
        hook.remove()
        classifier.train(was)
    return torch.cat(probs), torch.cat(seen)


def evaluate_run(
    path,
    classifier,
    count: int = 10000,
    seed: int = 0,
    data_dir: str | None = None,
    device: str = "cpu",
) -> dict:
    """The MNIST score and Frechet distance of a generator's digits and of real test digits.

    ``count`` generated digits (a conditional generator: as many of each class), ``count`` test
    digits, and ``count`` training digits (the reference of the Frechet distance) go through the
    classifier. A conditional generator's digits are also scored on how often the classifier reads
    the class they were asked for.

    Args:
        path: a ``cnnkit generate train`` run folder or its ``model.safetensors``.
        classifier: a ``cnnkit train`` run (folder or file) of the same digits, or a loaded classifier.
        count: images of each set.
        seed: seeds the generator's noise.
        data_dir: the folder holding the built-in data sets (default: the run's).
        device: where the networks run.

    Returns:
        ``{"generated": {"score", "fd"[, "accuracy", "accuracy_by_class"]}, "real": {"score", "fd",
        "accuracy"}, "count", "data", "conditional"[, "note"]}``: accuracies in [0, 1]; ``note``
        says when the classifier's label smoothing caps every score.

    Raises:
        CnnkitError: not a generator's run, a classifier of other images or classes, a count below 2
            or above the data set's test digits.

    Example:
        >>> generated = evaluate_run("runs/cgan", "runs/mnist")["generated"]   # doctest: +SKIP
        >>> generated["accuracy"]                                               # doctest: +SKIP
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise CnnkitError(f"--count must be an integer >= 2. Received: --count {count}")
    sampler = load_generator(path, device)
    clf: nn.Module = classifier.to(device) if isinstance(classifier, nn.Module) else load_classifier(classifier, device)
    config = sampler.info.get("config", {})
    data = config.get("data", "mnist")
    data_dir = data_dir or config.get("data_dir")
    test = load_dataset(data, "test", data_dir=data_dir)
    reference = load_dataset(data, "train", data_dir=data_dir)
    if count > min(len(test), len(reference)):  # every set holds count digits: the scores depend on the size
        raise CnnkitError(
            f"--count {count:,} is more than the {len(test):,} test digits of {data}; the real sets hold "
            f"--count digits too: use --count {min(len(test), len(reference))} or less"
        )
    if tuple(getattr(clf, "input_size", test.image_shape)) != tuple(test.image_shape):
        raise CnnkitError(
            f"the --classifier takes {tuple(clf.input_size)} images; {data} digits are {test.image_shape}: "
            f"give a classifier trained with `cnnkit train --data {data}`"
        )
    k = len(test.classes)
    if len(getattr(clf, "classes", test.classes)) != k:
        raise CnnkitError(f"the --classifier has {len(clf.classes)} classes; {data} has {k}: train one on {data}")
    labels = torch.arange(count) % k if sampler.classes else None
    fake = sampler.sample(count, labels, seed)

    def real(images: torch.Tensor) -> torch.Tensor:
        return images[:count].to(device).float().div(255)

    p_fake, f_fake = classify(clf, fake)
    p_test, f_test = classify(clf, real(test.images))
    _, f_ref = classify(clf, real(reference.images))
    y_test = test.labels[:count]
    out = {
        "generated": {"score": mnist_score(p_fake), "fd": frechet_distance(f_fake, f_ref)},
        "real": {
            "score": mnist_score(p_test),
            "fd": frechet_distance(f_test, f_ref),
            "accuracy": float((p_test.argmax(1) == y_test).double().mean()),
        },
        "count": count,
        "data": data,
        "conditional": bool(sampler.classes),
    }
    smoothing = (getattr(clf, "info", {}) or {}).get("config", {}).get("label_smoothing", 0) or 0
    if smoothing > 0:  # its probabilities never exceed 1 - smoothing: real digits cannot score near 10
        out["note"] = (
            f"the classifier was trained with label smoothing {smoothing:g}, which caps its confidence "
            "and so the MNIST score of any digits; one trained with --label-smoothing 0 gives the usual scale"
        )
    if labels is not None:
        hit = p_fake.argmax(1) == labels
        out["generated"]["accuracy"] = float(hit.double().mean())
        out["generated"]["accuracy_by_class"] = {
            sampler.classes[c]: float(hit[labels == c].double().mean()) for c in range(k)
        }
    return out
