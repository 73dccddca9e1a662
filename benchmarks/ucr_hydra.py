"""MultiRocket against Hydra + MultiRocket on validation splits of TRAIN (TEST is never read).

Hydra (Dempster, Schmidt & Webb 2023, "HYDRA: competing convolutional kernels for fast and accurate
time series classification"): at each dilation 2^0 ... 2^floor(log2((L - 1) / 8)), on the series
and on its first difference, 32 groups of 8 random length-9 kernels (zero mean, unit L1 norm); at
each time step each group's largest response adds its value to that kernel's count, its smallest
adds 1 to its own. The counts are "sparse scaled" (square root of the positive part, standardised
where not zero) and concatenated with MultiRocket's standardised features for one ridge classifier
(``cnnkit.tasks.sequence.rocket.ridge_loo``). Univariate sets only; a comparison, not a cnnkit model.
Adopted only if its mean validation error is lower than MultiRocket's by more than 0.002 (the
outcome: docs/experiments/2026-12-04-ucr-fast.md).

    CNNKIT_DATA=../shared/data python benchmarks/ucr_hydra.py [--sets GunPoint ECG200 ...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from ucr import benchmark_sets, reference_table  # benchmarks/ucr.py: the benchmark's sets

from cnnkit.data.series import load_series, val_split
from cnnkit.engine.precision import cpu_name
from cnnkit.models.rocket import MultiRocket1d
from cnnkit.tasks.sequence import rocket


class Hydra:
    """Hydra's transform for (N, 1, L) series: (N, dilations x 2 x 2 x 32 x 8) counts."""

    def __init__(self, length: int, k: int = 8, g: int = 64, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        top = int(math.log2((length - 1) / 8)) if length > 9 else 0
        self.dilations = [2**i for i in range(top + 1)]
        self.h, self.k = g // 2, k
        w = torch.randn(len(self.dilations), 2, k * self.h, 1, 9, generator=gen)
        w = w - w.mean(-1, keepdim=True)
        self.w = w / w.abs().sum(-1, keepdim=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, out = x.shape[0], []
        for i, d in enumerate(self.dilations):
            for j, inp in enumerate((x, x.diff(dim=2))):
                z = F.conv1d(inp, self.w[i, j], dilation=d, padding=4 * d).view(n, self.h, self.k, -1)
                top, at = z.max(2)
                low, low_at = z.min(2)
                out.append(torch.zeros(n, self.h, self.k).scatter_add_(-1, at, top))
                out.append(torch.zeros(n, self.h, self.k).scatter_add_(-1, low_at, torch.ones_like(low)))
        return torch.cat(out, 1).view(n, -1)


def sparse_scale(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Hydra's scaling, fitted on ``train``: sqrt of the positive part, standardised, zeros kept zero."""
    f = train.clamp(min=0).sqrt()
    mu, sigma = f.mean(0), f.std(0) + (f == 0).double().mean(0) ** 4 + 1e-8
    return [(v.clamp(min=0).sqrt() - mu) * (v > 0) / sigma for v in (train, *others)]


def compare(name: str, data_dir) -> tuple[float, float, float] | None:
    full = load_series(f"ucr:{name}", "train", data_dir)
    if full.channels != 1:
        return None
    train, val = val_split(full, 0.2, 0)
    if not len(val):
        return None
    tick = time.perf_counter()
    net = MultiRocket1d(len(full.classes), 1, full.length, seed=0)
    rocket.fit(net, train)
    with torch.no_grad():
        m_train, m_val = rocket.transform(net, train).double(), rocket.transform(net, val).double()
        e_multi = float((net.fc(m_val.float()).argmax(1) != val.labels).double().mean())
        hydra = Hydra(full.length)
        h_train, h_val = (
            torch.cat([hydra(s.values[i : i + 256]) for i in range(0, len(s), 256)]).double() for s in (train, val)
        )
    h_train, h_val = sparse_scale(h_train, h_val)
    x_train, x_val = torch.cat([m_train, h_train], 1), torch.cat([m_val, h_val], 1)
    k = len(full.classes)
    y = -torch.ones(len(train), k, dtype=torch.float64)
    y[torch.arange(len(train)), train.labels] = 1.0
    w, b, *_ = rocket.ridge_loo(x_train, y if k > 2 else y[:, 1:], rocket.ALPHAS)
    score = x_val @ w + b
    pred = score.argmax(1) if k > 2 else (score[:, 0] > 0).long()
    return e_multi, float((pred != val.labels).double().mean()), time.perf_counter() - tick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", help="these sets only (default: the UCR benchmark's installed sets)")
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}  threads: {torch.get_num_threads()}  load average: {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.sets or benchmark_sets(args.data_dir, reference_table(args.data_dir)):
        r = compare(name, args.data_dir)
        if r is not None:
            rows.append(r)
            print(f"{name:30s} multirocket {r[0]:.4f}  hydra+multirocket {r[1]:.4f}  ({r[2]:.1f} s)", flush=True)
    if rows:
        a, b = (sum(r[i] for r in rows) / len(rows) for i in (0, 1))
        wins, ties = sum(r[1] < r[0] for r in rows), sum(r[1] == r[0] for r in rows)
        print(f"{len(rows)} sets: mean validation error multirocket {a:.4f}, hydra+multirocket {b:.4f}")
        print(f"hydra+multirocket wins / ties / losses: {wins} / {ties} / {len(rows) - wins - ties}")


if __name__ == "__main__":
    from cnnkit.errors import CnnkitError

    try:
        sys.exit(main())
    except CnnkitError as exc:  # bad input: one line and a non-zero exit, not a traceback
        sys.exit(f"error: {' '.join(str(exc).split())}")
