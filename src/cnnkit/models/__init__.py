"""The model zoo and model building: one registry (:mod:`._registry`, each entry tagged with its task),
one family per file (the classic CNNs with the state-dict names of their reference implementations,
and the detection, segmentation, series, video, style and GAN networks), network specs
(:mod:`.spec`, :mod:`.network`), feature pyramids of any backbone (:mod:`.features`) and
shapes-only builds on the meta device (:mod:`.meta`)."""

from importlib import import_module

from cnnkit.models._registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
)

# one family per file; importing a file registers its variants
_MODEL_MODULES = [
    "alexnet",
    "vgg",
    "googlenet",
    "inception",
    "resnet",
    "densenet",
    "senet",
    "xception",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3",
    "efficientnet",
    "lenet",
    "notes",
    "mnist_nets",
    "dense",
    "series",
    "rocket",
    "video",
    "style",
    "gan",
]
_imported = False


def _import_model_modules() -> None:
    global _imported  # a one-way flag: importing is idempotent anyway
    if not _imported:
        for name in _MODEL_MODULES:
            import_module(f"{__name__}.{name}")
        _imported = True


__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
