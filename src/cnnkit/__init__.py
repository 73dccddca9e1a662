"""cnnkit: convolutional neural networks, exact and fast, on PyTorch.

The public API is re-exported lazily so that ``import cnnkit`` stays cheap:

- ``cnnkit.summary(target, input_size=..., batch_size=...)`` -- shapes, parameters, MACs, memory
- ``cnnkit.memory_plan(target, input_size=..., memory=...)`` -- the largest batch that fits, and remedies
- ``cnnkit.create_model(name, ...)`` / ``cnnkit.list_models()`` -- the model zoo
- ``cnnkit.load(path)`` -- a trained run of any task as an eval-mode ``nn.Module`` (never runs code
  from the file: ``trust_code=True, factory="net.py:build"`` for a network only Python builds)
- ``cnnkit.to_fcn(model)`` -- dense heads turned into convolutions
- ``cnnkit.load_keras(path)`` -- a Keras ``.keras`` / ``.h5`` model as ``(network, input_size)`` (read as data)
- ``cnnkit.export_onnx(model, example, path)`` / ``cnnkit.OnnxModel(path)`` -- ONNX out, checked in ONNX Runtime

Every function here raises :class:`CnnkitError` (and nothing else) for input it cannot use: a bad
value, or a missing, damaged or crafted file. Each task's own entry points (config, train,
evaluate, predict, load) are in its package: :mod:`cnnkit.tasks.classify`, ``detect``, ``segment``,
``instance``, ``sequence``, ``video``, ``video_predict``, ``generate`` and ``style``.
"""

from importlib import import_module

from cnnkit.errors import CnnkitError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "summary": "cnnkit.analysis",
    "memory_plan": "cnnkit.analysis",
    "Summary": "cnnkit.analysis",
    "create_model": "cnnkit.models",
    "list_models": "cnnkit.models",
    "register_model": "cnnkit.models",
    "load": "cnnkit.tasks.load",
    "to_fcn": "cnnkit.models.fcn",
    "load_keras": "cnnkit.models.keras",
    "export_onnx": "cnnkit.export",
    "OnnxModel": "cnnkit.export",
}

__all__ = ["CnnkitError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
