"""Fitting MultiRocket (:mod:`cnnkit.models.rocket`): its biases from TRAIN, then its linear layer
by ridge regression with the penalty chosen by leave-one-out error, in closed form.

This is the papers' classifier (Dempster et al. 2021; Tan et al. 2022: scikit-learn's
``RidgeClassifierCV`` with ``alphas = logspace(-3, 3, 10)`` on standardised features): the classes
are coded +1 / -1 (one column per class, one column for two classes), the features standardised
with TRAIN's mean and standard deviation, an unpenalised intercept, and for each penalty the
leave-one-out residuals in closed form from one eigendecomposition of the (N, N) Gram matrix
(Rifkin & Lippert 2007), all in double precision; the penalty with the smallest mean squared
residual is kept. Beyond 4,096 training series the penalty is chosen on 4,096 of them and the whole
set is solved at it (:func:`ridge_loo`). Nothing here is a gradient
step: the transform has no learned weight and the ridge solution is solved, not iterated.

The same leave-one-out residual also chooses the features (``COLUMNS``): all of them; the
proportions of positive values alone (``ppv``: MiniRocket's one pool, on both representations); that
pool of the series alone (``minirocket``: MiniRocket's own features); or Hydra's counts alone
(``hydra``, where the model has them). The other columns' weights are then 0. A set whose training
series are few or noisy can fit better on a smaller set; on most sets all the features win. The
candidates were chosen on validation splits of TRAIN (``benchmarks/ucr_recipe.py``).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from cnnkit.data.series import SeriesSet
from cnnkit.errors import CnnkitError, short_error
from cnnkit.models.rocket import MultiRocket1d

ALPHAS = tuple(10 ** (-3 + 6 * i / 9) for i in range(10))  # numpy's logspace(-3, 3, 10)
BATCH = 256  # series transformed at a time
LOO_SERIES = 4096  # at most this many training series choose the penalty (see ridge_loo)
# the feature sets the ridge chooses between (MultiRocket1d.column_sets)
COLUMNS = ("all", "ppv", "minirocket", "hydra")


@torch.no_grad()
def transform(net: MultiRocket1d, data: SeriesSet, progress=None) -> torch.Tensor:
    """(N, F) standardised features of ``data``."""
    out, device = [], net.mean.device
    for s in range(0, len(data), BATCH):
        out.append(net.forward_features(data.values[s : s + BATCH].to(device)))
        if progress is not None:
            progress(min(s + BATCH, len(data)), len(data))
    return torch.cat(out) if out else data.values.new_zeros(0, net.num_features, device=device)


@torch.no_grad()
def fit(net: MultiRocket1d, train: SeriesSet, alphas=ALPHAS, progress=None, columns=COLUMNS) -> dict:
    """Fit ``net`` to ``train`` in place: biases, standardisation, then ``fc`` by ridge regression.

    Args:
        net: a fresh :class:`~cnnkit.models.rocket.MultiRocket1d` built for ``train``'s channels and length.
        train: the training series.
        alphas: the penalties compared by leave-one-out error.
        progress: called as ``progress(done, total)`` while the series are transformed.
        columns: the feature sets compared with the penalties (:func:`fit_head`).

    Returns:
        ``{"alpha": the chosen penalty, "loo_error": its leave-one-out misclassification rate,
        "features": F, "columns": the feature set kept, "seconds": {"transform": s, "solve": s}}``.
    """
    tick = time.perf_counter()
    net.mean.zero_()
    net.scale.fill_(1.0)
    net.fit_biases(train.values.to(net.mean.device))
    x = transform(net, train, progress).double()
    transformed = time.perf_counter()
    fitted = fit_head(net, x, train.labels, alphas, columns)
    fitted["seconds"] = {"transform": transformed - tick, "solve": time.perf_counter() - transformed}
    return fitted


@torch.no_grad()
def fit_head(net: MultiRocket1d, x: torch.Tensor, labels: torch.Tensor, alphas=ALPHAS, columns=COLUMNS) -> dict:
    """Standardise ``net``'s features and solve its ``fc``: the second half of :func:`fit`.

    Args:
        net: the model whose biases are fitted, its ``mean`` and ``scale`` set here.
        x: (N, F) double features of the training series as :func:`transform` gives them with
            ``mean`` 0 and ``scale`` 1; standardised in place.
        labels: (N,) class indices.
        alphas: the penalties compared by leave-one-out error.
        columns: names of :meth:`~cnnkit.models.rocket.MultiRocket1d.column_sets`, the feature sets
            compared by leave-one-out error with the penalties (the others' weights are 0); a name
            of :data:`COLUMNS` that the model lacks (``hydra`` without Hydra) is left out.

    Returns:
        ``{"alpha", "loo_error", "features", "columns"}`` as :func:`fit` returns them.
    """
    sparse = net.sparse_features  # Hydra's counts: their share of zeros widens their scale (its paper's rule)
    zeros = x[:, sparse] == 0
    floor = zeros.double().mean(dim=0) ** 4 + 1e-8
    mean = x.mean(dim=0)
    x.sub_(mean)  # in place: a second copy of (N, F) costs more in fresh pages than the arithmetic
    scale = torch.linalg.vector_norm(x, dim=0) / len(x) ** 0.5  # the standard deviation (divisor N)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    scale[sparse] += floor
    x.div_(scale)
    x[:, sparse].masked_fill_(zeros, 0.0)  # a count of 0 stays 0, as forward_features leaves it
    net.mean.copy_(mean.float())
    net.scale.copy_(scale.float())
    y = labels.to(x.device)
    k = net.num_classes
    targets = -torch.ones(len(y), k, dtype=torch.float64, device=x.device)
    targets[torch.arange(len(y)), y] = 1.0
    if k == 2:
        targets = targets[:, 1:]  # one column: +1 for the second class
    sets = net.column_sets()
    wanted = list(columns)
    unknown = [c for c in wanted if c not in sets and c not in COLUMNS]
    columns = [c for c in wanted if c in sets]  # a default set the model lacks (hydra) is not a candidate
    if unknown or not columns:
        raise CnnkitError(f"unknown feature sets {unknown or wanted}; use some of {', '.join(sets)}")
    w, b, alpha, loo, rows, pick = ridge_loo(x, targets, alphas, columns=[sets[c].to(x.device) for c in columns])
    if k == 2:
        w, b = torch.cat([-w, w], dim=1) / 2, torch.cat([-b, b]) / 2
    net.fc.weight.copy_(w.T.float())
    net.fc.bias.copy_(b.float())
    pred = loo.argmax(dim=1) if loo.shape[1] > 1 else (loo[:, 0] > 0).long()
    return {
        "alpha": alpha,
        "loo_error": float((pred != y[rows]).double().mean()),
        "features": net.num_features,
        "columns": columns[pick],
    }


class RidgeFit(NamedTuple):
    """What :func:`ridge_loo` solved: ``w`` (F, T) (zero outside ``columns``), ``b`` (T,), the chosen
    ``alpha``, the leave-one-out predictions ``loo`` (M, T) of the rows ``rows`` (M,) the choice was
    made on, and the index of the chosen column set (0 without a choice)."""

    w: torch.Tensor
    b: torch.Tensor
    alpha: float
    loo: torch.Tensor
    rows: torch.Tensor
    columns: int


def ridge_loo(x: torch.Tensor, y: torch.Tensor, alphas, subset: int = LOO_SERIES, columns=None) -> RidgeFit:
    """Ridge regression of ``y`` (N, T) on ``x`` (N, F) with an unpenalised intercept, the penalty
    (and with ``columns`` the set of columns) chosen by the mean squared leave-one-out residual.

    With more than ``subset`` rows the choice is made on ``subset`` of them (a seeded random
    choice; the leave-one-out error is that subset's own) and the whole set is then solved at it by
    a Cholesky factorisation: the eigendecomposition costs N^3, and its N = 8,926 (UCR's largest
    TRAIN) takes minutes.

    Args:
        columns: candidate column sets (index tensors), each a model of its own; ``None``: all the
            columns. The columns are grouped by the candidates that hold them (``x``'s columns are
            reordered in place so that each group is a contiguous block: ``x`` is a scratch copy
            here); each group's Gram matrix is computed once and each candidate's is the sum of its
            groups', so candidates that share columns cost one Gram matrix between them, plus one
            eigendecomposition each.
    """
    n, f = x.shape
    candidates = [torch.arange(f, device=x.device)] if columns is None else [c.to(x.device) for c in columns]
    ym = y.mean(dim=0)
    yc = y - ym
    order, groups = _column_groups(f, candidates, x.device)
    if not torch.equal(order, torch.arange(f, device=x.device)):
        for i in range(0, n, 1024):  # in place, a block of rows at a time: no second (N, F) copy
            x[i : i + 1024, : len(order)] = x[i : i + 1024][:, order]
    xm = x[:, : len(order)].mean(dim=0)  # the columns' means, in their new order
    # (N, N), in double: the smallest penalties read its smallest eigenvalues. Centring the Gram matrix
    # is centring x (H x x^T H, H = I - 1 1^T / N), without a second (N, F) copy of x
    parts = {key: _gram(x[:, lo:hi]) for key, (lo, hi) in groups.items()}

    def gram(i: int, blocks: dict) -> torch.Tensor:  # candidate i's, centred, from the groups' Gram blocks
        return _centred(sum(g for key, g in blocks.items() if key >> i & 1))

    rows = torch.arange(n, device=x.device)
    if n > subset:  # the choice from a seeded subset's own Gram matrix, centred on its own mean
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:subset].sort().values.to(x.device)
        ys = y[rows] - y[rows].mean(dim=0)
        sub = {key: g[rows][:, rows] for key, g in parts.items()}
        choices = [_loo_choice(gram(i, sub), ys, alphas) for i in range(len(candidates))]
        del sub
    else:
        choices = [_loo_choice(gram(i, parts), yc, alphas) for i in range(len(candidates))]
    pick = min(range(len(choices)), key=lambda i: choices[i][0])  # the first of equals: the earlier candidate
    _, alpha, resid, dual = choices[pick]
    if n > subset:  # the whole set at the chosen penalty: only the chosen candidate's (N, N) matrix
        chosen = gram(pick, parts)
        chosen.diagonal().add_(alpha)
        dual = torch.cholesky_solve(yc, torch.linalg.cholesky(chosen))
    del parts
    w = x.new_zeros(f, y.shape[1])
    for key, (lo, hi) in groups.items():
        if key >> pick & 1:  # centred x's transpose times the dual solution, back in the original order
            w[order[lo:hi]] = (dual.T @ x[:, lo:hi]).T - xm[lo:hi, None] * dual.sum(dim=0)  # not x.T @ dual: 6x slower
    b = ym - (xm[:, None] * w[order]).sum(dim=0)
    return RidgeFit(w, b, alpha, y[rows] - resid, rows, pick)


def _column_groups(f: int, candidates: list[torch.Tensor], device) -> tuple[torch.Tensor, dict]:
    """The columns ordered by which candidates hold them: (the order, {membership bits: (start,
    end) of its block}); a column no candidate holds is left out of the order."""
    member = torch.zeros(f, dtype=torch.long, device=device)
    for i, cols in enumerate(candidates):
        member[cols] |= 1 << i
    order, groups, start = [], {}, 0
    for key in sorted(set(member.tolist()) - {0}, reverse=True):  # all candidates' shared columns first
        cols = (member == key).nonzero().flatten()
        order.append(cols)
        groups[key] = (start, start + len(cols))
        start += len(cols)
    return torch.cat(order), groups


def _gram(x: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """x x^T (N, N), one triangle of blocks computed and mirrored: half the multiply-adds of ``x @ x.T``."""
    n = x.shape[0]
    gram = x.new_empty(n, n)
    for i in range(0, n, block):
        for j in range(i, n, block):
            part = x[i : i + block] @ x[j : j + block].T
            gram[i : i + block, j : j + block] = part
            if j != i:
                gram[j : j + block, i : i + block] = part.T
    return gram


def _centred(gram: torch.Tensor) -> torch.Tensor:
    """A Gram matrix centred again: the constant direction (the intercept's) a null vector to rounding."""
    gram = gram - gram.mean(dim=1, keepdim=True)
    return gram - gram.mean(dim=0, keepdim=True)


def _loo_choice(gram: torch.Tensor, yc: torch.Tensor, alphas) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """The penalty with the smallest mean squared leave-one-out residual (Rifkin & Lippert 2007), from
    one eigendecomposition of the centred Gram matrix: (that residual, the penalty, its residuals,
    its dual solution)."""
    n = gram.shape[0]
    try:
        eigval, q = torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError as exc:  # non-finite or enormous features: the series' values
        raise CnnkitError(
            f"the ridge fit failed ({short_error(exc)}): the series' values are too large or "
            "not finite; z-normalise them (leave out --no-znorm) or scale them down"
        ) from None
    eigval = eigval.clamp(min=0)
    qy, q2 = q.T @ yc, q**2
    best = None
    for alpha in alphas:
        inv = 1.0 / (eigval + alpha)
        dual = q @ (inv[:, None] * qy)  # (N, T): (G + alpha I)^-1 yc
        # 1 - hat_ii over alpha; the constant direction (the intercept's, unpenalised) leaves 1 / (n alpha)
        diag = q2 @ inv - 1.0 / (n * alpha)
        resid = dual / diag[:, None]  # leave-one-out residuals
        err = float((resid**2).mean())
        if best is None or err < best[0]:
            best = (err, alpha, resid, dual)
    return best
