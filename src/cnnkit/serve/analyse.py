"""The analyse page's requests: a zoo name or a typed YAML spec -> ``cnnkit summary``, the memory
timeline of a training step, and ``cnnkit memory``.

Targets are never paths and never Python: a string is a zoo name, or spec text parsed with
``yaml.safe_load`` (aliases refused, size and numbers bounded) and built by
:func:`cnnkit.models.spec.build_from_spec` on the *meta* device, so a spec's parameters take no
memory. Before the real analysis one inference trace at batch 1 (meta, no backend) measures the cost;
a network over :class:`~cnnkit.serve.limits.Limits` is refused with the number that was too large.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial

from cnnkit.errors import CnnkitError, brief, short_error
from cnnkit.serve.limits import Limits, Refused

CACHE_SIZE = 32


def _spec_from_text(text: str, limits: Limits) -> dict:
    import yaml

    if len(text.encode()) > limits.spec_bytes:
        raise Refused(f"the spec is {len(text.encode()):,} bytes; at most {limits.spec_bytes:,} are accepted")
    try:  # the event stream first (the parser does not recurse; the composer of safe_load does)
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise Refused("YAML aliases (*name) are not accepted in a spec; write each layer out")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limits.nesting:
                    raise Refused(f"the spec is nested more than {limits.nesting} levels deep; flatten it")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        spec = yaml.safe_load(text)
    except RecursionError:  # not expected after the depth check; a 400 all the same
        raise Refused(f"the spec is nested too deeply to read; at most {limits.nesting} levels") from None
    except yaml.YAMLError as exc:  # the whole reason: where the parser was and where the problem is
        raise Refused(f"the spec is not valid YAML: {short_error(exc)}") from None
    if not isinstance(spec, dict) or "layers" not in spec:
        raise Refused("a spec is a mapping with 'input' (e.g. 1x28x28) and a list of 'layers'")
    return spec


def _check_numbers(obj, limits: Limits, where: str = "spec") -> None:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)) and abs(obj) > limits.spec_number:
        raise Refused(
            f"{where}: the number {obj} is larger than {limits.spec_number:,}, the largest a spec may hold here"
        )
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_numbers(v, limits, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_numbers(v, limits, f"{where}[{i}]")


def resolve(target, limits: Limits):
    """The request's ``target`` -> (what :func:`cnnkit.analysis.summary` takes, a cache key)."""
    from cnnkit.models import list_models, model_info

    if isinstance(target, str) and "\n" not in target and ":" not in target:
        name = target.strip()
        if name not in list_models():
            try:
                model_info(name)  # raises "unknown model name ..., did you mean ..."
            except CnnkitError as exc:
                raise Refused(f"{short_error(exc)}; or type a YAML spec") from None  # it quotes the name whole
        return name, ("zoo", name)
    if isinstance(target, str):
        spec = _spec_from_text(target, limits)
    elif isinstance(target, dict):
        spec = target
    else:
        raise Refused(f"target must be a zoo name or a YAML spec; received: {type(target).__name__}")
    limits.check_nesting(spec, "the spec")
    layers = spec.get("layers")
    if isinstance(layers, list) and len(layers) > limits.spec_layers:
        raise Refused(f"the spec has {len(layers)} layers; at most {limits.spec_layers} are accepted")
    _check_numbers(spec, limits)
    import json

    from cnnkit.models.meta import on_meta
    from cnnkit.models.spec import build_from_spec

    key = ("spec", json.dumps(spec, sort_keys=True, default=str))
    try:
        with on_meta():  # parameters without memory: a spec's size cannot exhaust the server
            model, _ = build_from_spec(spec)
    except CnnkitError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise Refused(f"the spec could not be built: {short_error(exc)}") from None
    return model, key


def _int(body: dict, key: str, default, low: int, high: int):
    """The body's integer ``key`` within [low, high]; a field whose default is None may be left out or null."""
    v = body.get(key, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise Refused(f"{key} must be an integer from {low} to {high:,}; received: {brief(repr(v))}")
    return v


def _precheck(target, input_size, limits: Limits) -> None:
    """One meta inference pass at batch 1 (no backend): refuse what would be too big or too slow."""
    from cnnkit.analysis.summary import DTYPES
    from cnnkit.analysis.trace import trace
    from cnnkit.models.network import resolve_target
    from cnnkit.models.spec import parse_input_size

    model, default, name = resolve_target(target)
    size = parse_input_size(input_size) if input_size is not None else default
    if size is None:
        raise Refused(f"{name} has no default input size: give one, e.g. 3x224x224")
    elements = 1
    for d in size:
        elements *= d
    if elements > limits.input_elements:
        raise Refused(
            f"an input of {'x'.join(map(str, size))} is {elements:,} values per sample; the "
            f"workbench analyses at most {limits.input_elements:,}"
        )
    params = sum(p.numel() for p in model.parameters())
    if params > limits.params:
        raise Refused(f"{name} has {params:,} parameters; the workbench analyses at most {limits.params:,}")
    try:
        tr = trace(model, (1, *size), DTYPES["float32"], False, "none")
    except CnnkitError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
        return  # the summary itself names the failing layer
    biggest = max((op.out_bytes for op in tr.ops), default=0)
    macs = sum(op.macs for op in tr.ops)
    for what, value, cap in (
        ("ATen ops", len(tr.ops), limits.ops),
        ("bytes in its largest tensor of one sample", biggest, limits.sample_bytes),
        ("MACs per sample", macs, limits.macs_per_sample),
    ):
        if value > cap:
            raise Refused(
                f"too big to analyse here: {name} at {'x'.join(map(str, size))} has {value:,} "
                f"{what} (the limit is {cap:,}); analyse it with `cnnkit summary` instead",
                422,
            )


class Analyser:
    """Runs one analysis at a time (each is CPU-bound), with a bounded wait and a result cache."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._slot = threading.Semaphore(1)  # one analysis at a time
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-analyse")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def options(self, body: dict) -> dict:
        dtype = body.get("dtype", "float32")
        optimizer = body.get("optimizer", "sgd")
        from cnnkit.analysis.summary import DTYPES, OPTIMIZERS

        if dtype not in DTYPES:
            raise Refused(f"dtype must be one of {', '.join(DTYPES)}; received: {brief(repr(dtype))}")
        if optimizer not in OPTIMIZERS:
            raise Refused(f"optimizer must be one of {', '.join(OPTIMIZERS)}; received: {brief(repr(optimizer))}")
        size = body.get("input")
        if isinstance(size, str) and not size.strip():
            size = None  # a blank field: the network's own input size, as when it is left out
        if size is not None and not isinstance(size, (str, list)):
            raise Refused(f"input must look like 3x224x224; received: {brief(repr(size))}")
        if size is not None:
            from cnnkit.models.spec import parse_input_size

            size = tuple(parse_input_size(size))
        return {
            "input_size": size,
            "batch_size": _int(body, "batch", 1, 1, self.limits.batch),
            "dtype": dtype,
            "optimizer": optimizer,
        }

    def run(self, kind: str, body: dict, fn):
        """``fn(target, **options)`` for the request, cached on (kind, target, options)."""
        if not isinstance(body, dict):
            raise Refused('the body must be a JSON object like {"target": "resnet18", "batch": 8}')
        if "target" not in body:
            raise Refused('the body needs a "target": a zoo name or a YAML spec')
        opts = self.options(body)
        target, tkey = resolve(body["target"], self.limits)
        bound = tuple(sorted(fn.keywords.items())) if isinstance(fn, partial) else ()  # /api/fit's checked options
        key = (kind, tkey, tuple(sorted(opts.items(), key=str)), bound)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if not self._slot.acquire(timeout=self.limits.busy_seconds):
            raise Refused("the workbench is busy with another analysis; try again in a moment", 503)
        try:
            future = self._pool.submit(self._compute, fn, target, opts)
            try:
                result = future.result(timeout=self.limits.analysis_seconds)
            except FutureTimeout:
                raise Refused(
                    f"the analysis took longer than {self.limits.analysis_seconds:.0f} s and was "
                    "abandoned; try a smaller input or batch, or `cnnkit summary`",
                    503,
                ) from None
        finally:
            self._slot.release()
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return result

    def _compute(self, fn, target, opts):
        _precheck(target, opts["input_size"], self.limits)
        return fn(target, **opts)


def summary_json(target, input_size, batch_size, dtype, optimizer) -> dict:
    from cnnkit.analysis import summary

    s = summary(target, input_size=input_size, batch_size=batch_size, dtype=dtype, optimizer=optimizer)
    if not isinstance(target, str):
        s.model = "spec"
    return s.to_dict()


def timeline_json(target, input_size, batch_size, dtype, optimizer, max_points: int = 800) -> dict:
    from cnnkit.analysis.timeline import memory_timeline

    t = memory_timeline(
        target, input_size=input_size, batch_size=batch_size, dtype=dtype, optimizer=optimizer, max_points=max_points
    )
    if not isinstance(target, str):
        t["model"] = "spec"
    return t


def _fit_json(target, input_size, batch_size, dtype, optimizer, memory: int, fit_batch: int | None) -> dict:
    from cnnkit.analysis import memory_plan

    r = memory_plan(
        target, input_size=input_size, memory=memory, batch_size=fit_batch, dtype=dtype, optimizer=optimizer
    )
    if not isinstance(target, str):
        r["model"] = "spec"
    return r


def fit_json(body: dict, limits: Limits) -> partial:
    """``cnnkit memory`` for the body's ``memory`` (e.g. "8GiB") and optional ``fit_batch`` (its ``--batch``),
    both checked here, before the request waits for the analysis slot."""
    from cnnkit.analysis.memory import parse_bytes

    memory = body.get("memory", "8GiB")
    if isinstance(memory, bool) or not isinstance(memory, (str, int)):
        raise Refused(f"memory must look like 8GiB or 500MB; received: {brief(repr(memory))}")
    return partial(_fit_json, memory=parse_bytes(memory), fit_batch=_int(body, "fit_batch", None, 1, limits.batch))
