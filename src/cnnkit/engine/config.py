"""One run config for every task: the fields all tasks share, each documented once.

A task's config (``TrainConfig``, ``FinetuneRecipe``, ``DetectConfig``, ``SegmentConfig``,
``InstanceConfig``) is a dataclass deriving from :class:`RunConfig`. It may give a shared field
another default (by declaring it again, plainly) and adds its own fields with :func:`option`. A
field's help is written once, at the field: :func:`add_config_arguments` turns the fields into the
command's flags (``batch_size`` -> ``--batch-size``) with that help, :func:`read_config_file` reads
any of them from ``--config FILE.yaml``, and the generated configuration reference of the docs
lists them. A run folder keeps the resolved config as ``config.yaml``: the fields the task uses
(:meth:`RunConfig.to_dict`).

``None`` in a field means "the task's default for this data"; a task's ``resolved()`` fills it in
before training, so the run stores the values it really used.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from cnnkit.errors import CnnkitError, plain_int, short_error

MAX_CONFIG_BYTES = 1 << 20  # a --config file larger than this is not a config
INT64 = 2**63  # torch counts and sizes in int64: an integer setting is below this whatever its field's bounds
# The most epochs a run takes: ten times the 10,000 a long schedule on a small set may ask for. More
# is a typo that would train for ever, and --minutes stops a run only between epochs.
MAX_EPOCHS = 100_000
# The most networks an ensemble trains (each a whole run's training, all held in the saved model):
# twenty times InceptionTime's 5.
MAX_ENSEMBLE = 100


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Any = MISSING,
    choices=None,
    metavar: str | None = None,
    cli: bool = True,
    minimum: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A config field with its help text (the one place it is written).

    Args:
        default: the field's default (``factory`` for a mutable one).
        help: what the field means, its units and accepted values: the ``--help`` text, the
            configuration reference and the docstring of the field.
        factory: a callable making the default (lists, dicts, nested configs).
        choices: the accepted values, checked by the command line.
        metavar: how ``--help`` names the value.
        cli: False for fields only a config file or Python sets (nested settings, callbacks).
        minimum: the smallest value accepted (numbers).
        below: values must be smaller than this (numbers).
        maximum: the largest value accepted (numbers; ``below`` for an open bound).

    Returns:
        A :func:`dataclasses.field`.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "metavar": metavar,
        "cli": cli,
        "minimum": minimum,
        "below": below,
        "maximum": maximum,
    }
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """The settings every task's run shares. ``None``: the task's default for the data."""

    data: str | None = option(None, help="what to train on: a built-in data set's name or a PATH")
    data_dir: str | None = option(
        None, help="the folder holding the built-in data sets; unset: $CNNKIT_DATA, else ~/.cache/cnnkit/data"
    )
    model: str | None = option(
        None, help="the network: a zoo name (`cnnkit zoo`), a spec .yaml/.json or FILE.py:FUNCTION"
    )
    weights: str | None = option(None, help="initial weights: imagenet (the published ones) | none | PATH")
    epochs: int | None = option(
        None, help=f"passes over the training split (at most {MAX_EPOCHS:,})", minimum=1, below=MAX_EPOCHS + 1
    )
    batch_size: int | None = option(None, help="global batch size (split across processes under torchrun)", minimum=1)
    lr: float | None = option(None, help="peak learning rate of the schedule", minimum=1e-12)
    optimizer: str = option("sgd", help="sgd (Nesterov momentum) | adamw | nadam", choices=("sgd", "adamw", "nadam"))
    momentum: float = option(0.9, help="SGD momentum", minimum=0, below=1)
    weight_decay: float = option(
        0.0,
        help="weight decay of conv and linear weights (not batch norm, not biases): decoupled with adamw, "
        "an L2 term in the gradient with sgd and nadam",
        minimum=0,
    )
    schedule: str = option(
        "onecycle",
        help="learning rate over the steps: onecycle (linear warm-up, then cosine to 0) | cosine | constant",
        choices=("onecycle", "cosine", "constant"),
    )
    warmup: float = option(0.1, help="share of the steps spent warming up (onecycle)", minimum=0, maximum=1)
    ema: float = option(
        0.0,
        help="exponential moving average of the weights, decay per step (0: off; "
        "e.g. 0.999); the saved model holds the average",
        minimum=0,
        below=1,
    )
    minutes: float = option(
        0.0, help="training time budget: stop, saved, before an epoch that would pass it (0: every epoch)", minimum=0
    )
    seed: int = option(0, help="seeds initialisation, data order, splits and augmentation", minimum=0, below=2**63)
    threads: int | None = option(
        None,
        help="torch threads per process (0: the free cores: those this process may use less those "
        "busy now, at least 1); unset: the free cores",
        minimum=0,
    )
    device: str | None = option(
        None, help="cpu | cuda (default: cuda when PyTorch sees a GPU, else cpu)", choices=("cpu", "cuda", None)
    )
    precision: str = option(
        "auto",
        help="auto: bf16 autocast where the device has native bf16 arithmetic "
        "(CUDA, AVX-512-BF16/AMX CPUs), else fp32 | fp32 | bf16",
        choices=("auto", "fp32", "bf16"),
    )
    val_every: int | None = option(
        None, help="validate after every k-th epoch and after the last (0: not while training)", minimum=0
    )
    subset: int = option(0, help="train on the first N training images only (0: all; smoke tests)", minimum=0)

    # shared fields a task does not use: no flag, and a config file that sets one is refused
    unsupported: ClassVar[tuple[str, ...]] = ()
    # names that runs of earlier versions stored -> today's names (their runs still load and evaluate)
    renamed: ClassVar[dict[str, str]] = {
        "backbone": "model",
        "dataset": "data",
        "freeze": "freeze_to",
        "freeze_stride": "freeze_to",
    }

    @classmethod
    def from_dict(cls, values: dict, strict: bool = True):
        """The config a run stored (or a dict of settings): old names renamed, lists made tuples.

        Args:
            values: field name -> value.
            strict: refuse names that are no field; False drops them (a run of another version).

        Raises:
            CnnkitError: an unknown setting (when ``strict``) or a value of the wrong type.
        """
        given = {cls.renamed.get(k, k): v for k, v in values.items()}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known), key=str)  # keys of a stored file may be of any type
        if unknown and strict:
            raise CnnkitError(f"unknown setting {str(unknown[0])[:60]!r}; known: {', '.join(known)}")
        return cls(**{k: _coerce(cls, k, v, "the settings") for k, v in given.items() if k in known})

    def unused(self) -> tuple[str, ...]:
        """The fields this run does not use: the shared fields its task does not take
        (``unsupported``); a task adds those a setting leaves unused (a fitted model's training steps)."""
        return tuple(self.unsupported)

    def to_dict(self) -> dict:
        """The config as plain JSON/YAML values (nested configs as dicts, tuples as lists): what a run
        stores (its ``config.yaml``, its metadata's ``config``). The fields the run does not use
        (:meth:`unused`) are left out, so that a reader is not told of an optimizer or schedule the
        run never had; :meth:`from_dict` gives them their defaults back."""
        unused = set(self.unused())
        return _plain({k: v for k, v in dataclasses.asdict(self).items() if k not in unused})


def field_help(cls: type, name: str) -> dict:
    """A field's metadata (help, choices, metavar, cli): its own, else the nearest base's."""
    for klass in cls.__mro__:
        own = {f.name: f for f in fields(klass)} if dataclasses.is_dataclass(klass) else {}
        f = own.get(name)
        if f is not None and f.metadata.get("help"):
            return dict(f.metadata)
    return {"help": "", "choices": None, "metavar": None, "cli": True}


def config_fields(cls: type) -> list[tuple[dataclasses.Field, dict, Any]]:
    """(field, metadata, type) of every field of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, field_help(cls, f.name), hints[f.name]) for f in fields(cls)]


def resolved_defaults(cls: type, examples: dict[str, dict]) -> dict[str, dict]:
    """What ``cls(**settings).resolved()`` fills in for each example, for the help's defaults.

    Args:
        cls: a config class whose ``resolved()`` fills its unset (None) fields from other settings
            (the data, the loss network).
        examples: a label for each case -> the settings that make it (``{"data": "pennfudan"}``).

    Returns:
        label -> {field: value} of the fields left None by the class ("none" where the case leaves
        one unused).
    """
    unset = {f.name for f in fields(cls) if _default(f) is None}
    return {
        label: {
            k: "none" if v is None else v
            for k, v in _plain(dataclasses.asdict(cls(**settings).resolved())).items()
            if k in unset
        }
        for label, settings in examples.items()
    }


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (), presets: dict[str, dict] | None = None
) -> None:
    """One flag per field of ``cls`` (``batch_size`` -> ``--batch-size``), plus ``--config FILE.yaml``.

    Flags the user does not type leave no value (``argparse.SUPPRESS``): :func:`config_from_args`
    then keeps the config file's value, or the task's default.

    Args:
        parser: the command's parser.
        cls: the task's config class.
        skip: fields the command sets in another way.
        presets: the command's named presets (name -> the values it sets): a field that one of them
            sets shows each preset's value as its default.
    """
    defaults = {f.name: _default(f) for f in fields(cls)}
    for f, meta, kind in config_fields(cls):
        if f.name in skip or f.name in getattr(cls, "unsupported", ()) or not meta.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        value = defaults[f.name]
        shown = "the task's default" if value is None else _show(value)
        if presets and any(f.name in values for values in presets.values()):
            each = {name: values.get(f.name, value) for name, values in presets.items()}
            unset = "the task's default"
            shown = ", ".join(f"{name} {unset if v is None else _show(v)}" for name, v in each.items())
            if len({repr(v) for v in each.values()}) == 1:  # the same whatever the data
                shown = _show(next(iter(each.values())))
        if meta.get("choices") and "|" not in meta["help"]:
            meta = {**meta, "help": f"{meta['help']}: {' | '.join(map(str, meta['choices']))}"}
        own = any(s in meta["help"] for s in ("(default:", "unset:", "(required)"))  # the help says it already
        text = meta["help"] if own else f"{meta['help']} (default: {shown})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        base, nargs = _cli_type(kind)
        if base is None:
            continue
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = base
            if nargs:
                kw["nargs"] = nargs
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kw)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        dest="config_file",
        help="read any of these settings from a YAML file (flags given on the command "
        "line win); a run folder's config.yaml is one",
    )


def config_from_args(cls: type, args: argparse.Namespace, base: dict | None = None, check: bool = True) -> dict:
    """The settings for ``cls`` from ``base``, then ``--config FILE.yaml``, then the typed flags.

    Returns:
        A dict of field values (only those set somewhere), for ``cls(**values)`` or a preset.
    """
    values = dict(base or {})
    path = getattr(args, "config_file", None)
    if path:
        values.update(read_config_file(path, cls))
        model = values.get("model")
        if isinstance(model, str) and ".py:" in model and "model" not in vars(args):
            raise CnnkitError(
                f"--config {path} names a network built by Python code (model: {model}); reading a "
                f"config file never runs code: if you trust that file, pass --model {model} too"
            )
    names = {f.name for f in fields(cls)}
    for name in names:
        if name in vars(args):
            values[name] = _coerce(cls, name, getattr(args, name), "the command line")
    if check:
        check_values(cls, values)
    return values


def check_values(cls: type, values: dict) -> None:
    """Every value within its field's bounds: its choices, ``minimum`` / ``below`` / ``maximum``,
    numbers finite, and integers within int64 (:data:`INT64`), the most torch takes as a count or a size.

    Checked where settings come in (the command line, ``--config``), so that a bad value is one line
    naming its flag, before any work.

    Raises:
        CnnkitError: the first value out of bounds.
    """
    import math

    for name, value in values.items():
        meta, flag = field_help(cls, name), "--" + name.replace("_", "-")
        choices = meta.get("choices")
        if choices and value is not None and value not in choices:
            raise CnnkitError(
                f"{flag} must be one of {', '.join(str(c) for c in choices if c is not None)}; received "
                f"{value if isinstance(value, (int, float)) else repr(str(value)[:60])}"
            )
        for v in value if isinstance(value, tuple) else (value,):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise CnnkitError(f"{flag} must be a finite number; received {v}")
            low, high, top = meta.get("minimum"), meta.get("below"), meta.get("maximum")
            if (low is not None and v < low) or (high is not None and v >= high) or (top is not None and v > top):
                if top is not None:
                    want = f"at most {top}" if low is None else f"from {low} to {top}"
                elif isinstance(v, int) and high is None and low in (0, 1):
                    want = "an integer >= 0" if low == 0 else "a positive integer"
                elif isinstance(v, int) and isinstance(low, int) and isinstance(high, int):
                    want = f"an integer from {low:,} to {high - 1:,}"
                else:
                    want = f"at least {low}" if high is None else f"at least {low} and below {high}"
                raise CnnkitError(f"{flag} must be {want}; received {v}")
            if isinstance(v, int) and not -INT64 <= v < INT64:
                lowest = f"{low:,}" if isinstance(low, int) else f"{-INT64:,}"
                raise CnnkitError(f"{flag} must be an integer from {lowest} to {INT64 - 1:,}; received {v}")


def read_config_file(path: str | Path, cls: type) -> dict:
    """The settings of a YAML config file, checked against the fields of ``cls``.

    Raises:
        CnnkitError: the file is missing, too large, not YAML, not a mapping, names an unknown
            setting or gives a value of the wrong type.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CnnkitError(f"--config {path}: no such file; give a YAML file of settings (a run's config.yaml)")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise CnnkitError(f"--config {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise CnnkitError(f"--config {path} is not valid YAML ({short_error(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CnnkitError(f"--config {path} must be a mapping of setting: value; received a {type(data).__name__}")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # `1: 2` reads as an int key
        raise CnnkitError(
            f"--config {path}: {str(odd[0])[:60]!r} is not a setting name; names are words, as in `epochs: 5`"
        )
    unsupported = getattr(cls, "unsupported", ())
    known = [f.name for f in fields(cls) if f.name not in unsupported]
    unknown = sorted(set(data) - set(known) - set(unsupported))
    if unknown:
        raise CnnkitError(f"--config {path}: unknown setting {unknown[0][:60]!r}; known: {', '.join(known)}")
    # a run's own config.yaml lists the shared settings this command does not take, at their defaults
    defaults = {f.name: _plain(_default(f)) for f in fields(cls) if f.name in unsupported}
    for k in sorted(set(data) & set(unsupported)):
        if data[k] != defaults[k]:
            raise CnnkitError(
                f"--config {path}: this command does not take {k!r} (received {str(data[k])[:60]!r}); "
                f"remove it or set it to {defaults[k]!r}"
            )
    return {k: _coerce(cls, k, v, f"--config {path}") for k, v in data.items() if k not in unsupported}


def config_yaml(config: dict) -> bytes:
    """The resolved config as YAML (what a run folder's ``config.yaml`` holds, for ``--config``)."""
    import yaml

    return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True).encode()


# ----------------------------------------------------------------------------- helpers


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def _cli_type(kind: Any) -> tuple[Any, Any]:
    """(scalar type, nargs) a flag parses for a field annotated ``kind``; (None, None) for nested."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        scalars = [a for a in args if a in (int, float, str, bool)]
        if len(args) > 1 and scalars:  # int | dict and the like: the scalar form on the command line
            return scalars[0], None
        return _cli_type(args[0])
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return inner[0], "*"
        return inner[0], len(inner)
    if kind in (int, float, str, bool):
        return kind, None
    return None, None  # a nested config: set by a config file or Python


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """A value for field ``name``: lists to tuples for tuple fields, ints accepted for floats."""
    kind = typing.get_type_hints(cls)[name]
    base, nargs = _cli_type(kind)
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise CnnkitError(f"{where}: {name} must be set (received null); remove it to take the default")
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):  # a nested section (augment:): its fields
        return _section(kind, name, value, where)
    if isinstance(value, bool) and base in (int, float):
        raise CnnkitError(f"{where}: {name} must be {_a(base)}; received {value!r}")
    if nargs:  # a tuple field: a list of `nargs` values of its element type (any number for "*")
        count = "" if nargs == "*" else f"{nargs} "
        want = f"{where}: {name} must be a list of {count}{getattr(base, '__name__', 'value')}s"
        if not isinstance(value, (list, tuple)) or (nargs != "*" and len(value) != nargs):
            raise CnnkitError(f"{want}; received {str(value)[:60]!r}")
        return tuple(_element(base, v, want) for v in value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, str, bool) and not nargs and not isinstance(value, (base, dict)):
        raise CnnkitError(f"{where}: {name} must be {_a(base)}; received {str(value)[:60]!r}")
    return value


def _a(kind: type) -> str:
    """``a float``, ``an int``: a type's name with its article, for messages."""
    return f"an {kind.__name__}" if kind is int else f"a {kind.__name__}"


def _section(kind: type, name: str, value: Any, where: str) -> Any:
    """A nested settings section: an instance of ``kind`` as it is, or a mapping of its fields, each
    of its field's type (ints accepted for floats), checked here so that a bad one is one line."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise CnnkitError(f"{where}: {name} must be a mapping of its settings; received {str(value)[:60]!r}")
    hints = typing.get_type_hints(kind)
    unknown = sorted(set(value) - set(hints), key=str)  # `1: 2` in a YAML section is an int key
    if unknown:
        raise CnnkitError(f"{where}: unknown setting {name}.{str(unknown[0])[:60]}; known: {', '.join(hints)}")
    out = {}
    for key, v in value.items():
        want = hints[key]
        if isinstance(v, int) and not isinstance(v, bool) and want is float:
            v = float(v)
        if want in (int, float, bool, str) and (not isinstance(v, want) or (isinstance(v, bool) and want is not bool)):
            raise CnnkitError(f"{where}: {name}.{key} must be {_a(want)}; received {str(v)[:60]!r}")
        out[key] = v
    return out


def _element(base: Any, v: Any, want: str) -> Any:
    """One element of a tuple field: ints accepted for floats, anything else of another type refused."""
    if base is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if base in (int, float, str, bool) and (not isinstance(v, base) or (isinstance(v, bool) and base is not bool)):
        raise CnnkitError(f"{want}; received {str(v)[:60]!r}")
    return v


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def busy_cores(interval: float = 0.25) -> float:
    """How many of the cores this process may run on (``os.sched_getaffinity``) the machine's other
    work keeps busy now: the busy share of those cores' time in ``/proc/stat`` (their own ``cpuN``
    lines) over ``interval`` seconds, times their number; the all-cores line where those lines or
    the affinity cannot be read. Work on cores this process may not use (a container's neighbours on
    a shared host) is not counted. Where ``/proc/stat`` cannot be read, the one-minute load average
    (``os.getloadavg``), which still counts a job that ended a minute ago.

    Args:
        interval: seconds between the two readings.

    Returns:
        Busy cores, >= 0 (fractional).
    """
    import time

    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        mine = set()

    def ticks() -> tuple[int, int, int]:
        """(total, idle) ticks of this process's cores (else of all cores), and how many cores."""
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu")]
        own = [r for r in rows if r[0] in mine]
        total = idle = 0
        for row in own or rows[:1]:  # the first line, "cpu", sums every core
            values = [int(v) for v in row[1:]]
            total += sum(values[:8])  # user .. steal; guest time is already in user
            idle += values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return total, idle, len(own) or os.cpu_count() or 1

    try:
        total0, idle0, _ = ticks()
        time.sleep(interval)
        total1, idle1, cpus = ticks()
        return max(0.0, (1 - (idle1 - idle0) / max(1, total1 - total0)) * cpus)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


CGROUP_ROOT = "/sys/fs/cgroup"  # where the kernel mounts the control groups


def quota_cores(root: str = CGROUP_ROOT) -> int | None:
    """The CPUs a container's quota grants this process (``docker --cpus 2``: 2), rounded up, or None
    without a quota. Read from the cgroup v2 ``cpu.max`` of the process's own group (``/proc/self/cgroup``'s
    ``0::`` line) or the v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of ``max`` or -1 is none.

    Example:
        >>> quota_cores("/nonexistent") is None
        True
    """
    group = ""
    try:
        with open("/proc/self/cgroup") as f:
            group = next((line.split("::", 1)[1].strip() for line in f if line.startswith("0::")), "")
    except OSError:
        pass
    candidates = []
    for folder in dict.fromkeys(os.path.normpath(p) for p in (os.path.join(root, group.lstrip("/")), root)):
        candidates.append(("v2", os.path.join(folder, "cpu.max")))
    candidates.append(("v1", os.path.join(root, "cpu", "cpu.cfs_quota_us")))
    for kind, path in candidates:
        try:
            with open(path) as f:
                text = f.read().split()
            if kind == "v2":
                quota, period = text[0], text[1] if len(text) > 1 else "100000"
            else:
                with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                    quota, period = text[0], f.read().strip()
        except (OSError, IndexError):
            continue
        quota_us, period_us = plain_int(quota), plain_int(period)  # "max": no quota
        if quota_us is None or not period_us:
            return None
        return max(1, -(-quota_us // period_us))
    return None


def launched() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun launched it, (0, 1) without torchrun: read from
    ``RANK`` / ``WORLD_SIZE``, so it is known before any process group starts and before torch is
    imported (rank 0 is the one that writes and speaks). Values that are not integers were not set
    by torchrun: (0, 1)."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def free_cores(world: int | None = None) -> int:
    """Torch threads per process that use the cores this machine has free now.

    ``OMP_NUM_THREADS``, when the environment sets it to a positive number, is taken as it is (the
    usual way to fix a process's threads, and what makes a run's arithmetic independent of the
    machine's load). Otherwise: the cores this process may run on (``os.sched_getaffinity``;
    ``os.cpu_count`` where that is missing; at most a container's CPU quota, :func:`quota_cores`)
    less the cores other work keeps busy now
    (:func:`busy_cores`, a quarter-second reading), rounded to whole cores, at least 1, shared among
    the ``world`` processes of a torchrun job (default: ``LOCAL_WORLD_SIZE``, else 1). An idle
    2-core machine gives 2; one other busy process on it, 1. The cores are read once, before the run
    adds to their load.

    Args:
        world: processes sharing the cores (None: ``LOCAL_WORLD_SIZE`` or 1).

    Returns:
        The number of threads, >= 1.

    Example:
        >>> free_cores() >= 1
        True
    """
    fixed = plain_int(os.environ.get("OMP_NUM_THREADS", ""))
    if fixed:
        return fixed
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    cores = min(cores, quota_cores() or cores)  # a container's CPU quota, where it sets one
    world = world or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    free = min(cores, max(1, round(cores - busy_cores())))
    return max(1, free // max(1, world))


# glibc's mallopt parameters and the values keep_freed_memory gives them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: (1 << 31) - 1}
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def glibc() -> bool:
    """Whether this process's C library is glibc (``os.confstr`` names it; macOS and musl do not)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory of freed tensors for the next ones.

    glibc maps every block above its mmap threshold (adaptive, at most 32 MiB) fresh from the kernel
    and unmaps it when it is freed. A network's activations at photo sizes are such blocks (one
    (8, 96, 160, 160) fp32 map is 79 MB), so every step of training and every answer would pay the
    kernel a page fault, and a page of zeros, for each 4 KiB of each of them. This raises the mmap
    threshold to 1 GiB and the trim threshold to 2 GiB (``mallopt``), so that freed blocks are reused
    instead. The arithmetic is the same to the bit; the process keeps the memory of its busiest
    step until it ends.

    Nothing is changed where the C library is not glibc, or where the environment sets malloc's own
    tunables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
    ``GLIBC_TUNABLES``): the user's choice stands. Every training run (:func:`use_threads`) and
    every ``cnnkit`` command call it; later calls repeat the first one's answer.

    Returns:
        True when glibc keeps freed memory on this function's request.
    """
    import ctypes

    if not glibc() or any(k in os.environ for k in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in _KEEP.items())


def use_threads(threads: int | None) -> int:
    """Set torch's threads to ``threads`` (``--threads``, when > 0) or :func:`free_cores`; return the number.

    The process also keeps the memory of freed tensors from then on (:func:`keep_freed_memory`).

    Args:
        threads: the user's ``--threads``; None or 0: decide from the free cores.

    Returns:
        The number of threads set (what a run stores as ``threads`` in its metadata).
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads and threads > 4 * cores:  # thousands of OpenMP threads: the process crashes (SIGSEGV)
        raise CnnkitError(
            f"--threads {threads} is more than 4 times the {cores} cores this process may use; "
            f"give at most {cores} (0: the free cores)"
        )
    n = threads if threads else free_cores()
    torch.set_num_threads(n)
    keep_freed_memory()
    return n
