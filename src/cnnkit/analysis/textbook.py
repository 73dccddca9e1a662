"""The notes' hand calculation of memory, with the arithmetic written out.

Géron's exercise 2 (chapter 14): at inference, a layer's output can be released once the next layer has
been computed, so the peak is the largest pair of consecutive outputs, plus the parameters; in training,
backpropagation keeps every layer's output until the backward pass, so it is every layer's output times
the batch, plus the input batch, plus the parameters (gradients neglected: "released gradually").
"""

from __future__ import annotations

from math import prod


def _fmt(n: int) -> str:
    return f"{n:,}"


def textbook_memory(
    rows: list[dict],
    input_shape: tuple[int, ...],
    batch: int,
    itemsize: int,
    param_count: int,
    outputs: list[tuple[str, tuple]] | None = None,
) -> dict:
    """``rows``: the summary's layers (dicts with ``name`` and ``output_shape``), in execution order;
    ``outputs``: (name, shape) of every output they produce, in execution order, where a layer may
    run more than once (default: one output per row)."""
    if outputs is None:
        outputs = [(r["name"], tuple(r["output_shape"])) for r in rows if r.get("output_shape")]
    outs = [(name, prod(shape) * itemsize) for name, shape in outputs if shape]
    in_bytes = prod(input_shape) * itemsize
    param_bytes = param_count * itemsize
    # inference: the largest "previous + current" pair over the chain input -> layer 1 -> ... (one instance)
    chain = [("input", in_bytes)] + outs
    best, pair = 0, ("input", "input")
    for (a, na), (b, nb) in zip(chain, chain[1:]):
        if na + nb > best:
            best, pair = na + nb, (a, b)
    if len(chain) == 1:
        best = in_bytes
    inference = batch * best + param_bytes
    per_instance = sum(n for _, n in outs)
    training = batch * per_instance + batch * in_bytes + param_bytes
    steps = [
        f"bytes per value: {itemsize}",
        "layer outputs, one instance: "
        + ", ".join(f"{name} {_fmt(n)}" for name, n in outs[:12])
        + (f", ... ({len(outs)} layers)" if len(outs) > 12 else ""),
        f"inference: largest consecutive pair {pair[0]} + {pair[1]} = {_fmt(best)} x batch {batch}; "
        f"+ parameters {param_count:,} x {itemsize} = {_fmt(param_bytes)}; total {_fmt(inference)} bytes",
        f"training: all outputs {_fmt(per_instance)} x batch {batch} = {_fmt(batch * per_instance)}; "
        f"+ input {_fmt(in_bytes)} x {batch} = {_fmt(batch * in_bytes)}; + parameters {_fmt(param_bytes)}; "
        f"total {_fmt(training)} bytes (gradients neglected, as the notes do)",
    ]
    dense = []
    for r in rows:  # the notes' comparison: a dense layer producing the same output maps
        ins, outs_ = r.get("input_shape") or [], r.get("output_shape") or []
        if r["type"].startswith("Conv") and len(ins) == 3 and len(outs_) == 3:
            per_map = prod(outs_[1:]) * prod(ins)
            dense.append(
                {
                    "name": r["name"],
                    "conv_params": r["params"],
                    "dense_weights_per_map": per_map,
                    "dense_weights": per_map * outs_[0],
                    "arithmetic": f"{outs_[1]}x{outs_[2]} neurons per map, each connected to "
                    f"{'x'.join(map(str, ins))} inputs = {per_map:,} weights per map",
                }
            )
    return {
        "conv_vs_dense": dense,
        "inference_bytes": inference,
        "training_bytes": training,
        "per_instance_output_bytes": per_instance,
        "input_bytes_per_instance": in_bytes,
        "param_bytes": param_bytes,
        "peak_pair": list(pair),
        "arithmetic": steps,
    }
