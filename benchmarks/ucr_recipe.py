"""Choose the one UCR recipe on validation splits of TRAIN only (TEST is never read here).

Each candidate trains on 80 % of a set's TRAIN (stratified, seed 0) and is scored on the other
20 %; the candidate with the best mean validation accuracy (ties: lower mean validation loss)
becomes :mod:`benchmarks.ucr`'s recipe. Prints one line per (set, candidate) and the means.

    PYTHONPATH=src nice -n 10 python benchmarks/ucr_recipe.py [--sets GunPoint ECG200 ...]
"""

from __future__ import annotations

import argparse
import os
import time

from cnnkit.engine.precision import cpu_name
from cnnkit.tasks.sequence import SequenceConfig, train

SETS = ["ItalyPowerDemand", "Coffee", "GunPoint", "ECG200", "ArrowHead"]
CANDIDATES = {  # name -> settings on top of SequenceConfig's defaults (resnet1d: ~2.6x FCN's cost a step)
    "fcn1d-1000": dict(model="fcn1d", steps=1000),
    "fcn1d-1000-lr3e-3": dict(model="fcn1d", steps=1000, lr=3e-3),
    "resnet1d-400": dict(model="resnet1d", steps=400),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=SETS)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--data-dir", default=os.environ.get("CNNKIT_DATA"))
    args = p.parse_args()
    print(f"cpu: {cpu_name()}  load average: {os.getloadavg()[0]:.1f}", flush=True)
    scores: dict[str, list[tuple[float, float]]] = {c: [] for c in args.candidates}
    for name in args.sets:
        for cand in args.candidates:
            cfg = SequenceConfig(data=f"ucr:{name}", data_dir=args.data_dir, val_every=0, **CANDIDATES[cand])
            tick = time.perf_counter()
            r = train(cfg, None, quiet=True)
            scores[cand].append((r.val["accuracy"], r.val["loss"]))
            print(
                f"{name:20s} {cand:20s} val acc {r.val['accuracy']:.3f} loss {r.val['loss']:.3f} "
                f"({r.val['series']} series)  {time.perf_counter() - tick:.0f} s  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for cand, rows in scores.items():
        acc = sum(a for a, _ in rows) / len(rows)
        loss = sum(v for _, v in rows) / len(rows)
        print(f"mean {cand:20s} val acc {acc:.4f} loss {loss:.4f} over {len(rows)} sets")


if __name__ == "__main__":
    main()
