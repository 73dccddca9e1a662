"""TorchScript modules inside a network: which modules' forward hooks run, and how to add hooks there.

A TorchScript module (``torch.jit.script`` or ``torch.jit.trace``) runs its sub-modules from compiled
code, which calls no hooks; it refuses ``register_forward_hook`` itself, though a call of it from
Python runs the hooks ``nn.Module``'s own methods give it. What hooks into a network (the summary,
the memory measurement, the explanations, :func:`cnnkit.to_fcn`) goes through :func:`hook_points`
and :func:`add_hooks`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

ROOT = "(model)"  # the name of a network that is TorchScript as a whole


def is_torchscript(module: nn.Module) -> bool:
    """Whether ``module`` is TorchScript (``torch.jit.script`` or ``torch.jit.trace``): its forward is
    compiled code, which calls its sub-modules without their hooks."""
    return isinstance(module, torch.jit.ScriptModule)


def hook_points(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """``(name, module, leaf)`` of every module below ``model`` whose forward hooks run when it runs,
    in ``named_modules`` order: a TorchScript module is a leaf, and its sub-modules, which its compiled
    forward calls without their hooks, are left out. A TorchScript ``model`` is one leaf, named
    ``"(model)"`` (as it is inside :func:`cnnkit.analysis.trace.stateless_root`).

    Hooks go on through ``nn.Module``'s own methods (:func:`add_hooks`): a scripted module refuses
    ``register_forward_hook``, though its call runs the hooks it holds.
    """
    if is_torchscript(model):
        return [(ROOT, model, True)]
    points: list[tuple[str, nn.Module, bool]] = []
    compiled: list[str] = []
    for name, mod in model.named_modules():
        if mod is model or any(name.startswith(c + ".") for c in compiled):
            continue
        leaf = is_torchscript(mod)
        if leaf:
            compiled.append(name)
        points.append((name, mod, leaf or next(mod.children(), None) is None))
    return points


def torchscript_parts(model: nn.Module) -> list[str]:
    """The names of the TorchScript modules in ``model`` whose own layers run without hooks (a
    TorchScript module that holds layers); ``["(model)"]`` for a network that is TorchScript as a whole."""
    return [n for n, m, _ in hook_points(model) if is_torchscript(m) and next(m.children(), None) is not None]


def add_hooks(module: nn.Module, pre, post, with_kwargs: bool = False, prepend: bool = False) -> list:
    """Register the forward pre-hook ``pre`` and hook ``post`` (either may be None) on ``module``,
    TorchScript ones included; the handles to remove them. ``with_kwargs`` and ``prepend`` are
    ``register_forward_pre_hook``'s, for ``pre``."""
    handles = []
    if pre is not None:
        handles.append(nn.Module.register_forward_pre_hook(module, pre, prepend=prepend, with_kwargs=with_kwargs))
    if post is not None:
        handles.append(nn.Module.register_forward_hook(module, post))
    return handles


def compiled_ops(module: nn.Module) -> list[tuple[str, tuple]]:
    """The operators the compiled forward of the TorchScript ``module`` runs, its sub-modules' calls
    inlined and every branch and loop body included: ``(kind, constants)`` for each ``aten::`` node,
    ``kind`` as ``"aten::relu_"`` and ``constants`` the values of its inputs, None where an input is
    computed. What no hook can see from Python (which activations, which convolutions) is read here.
    A module without a compiled forward (a ModuleList) runs none."""
    try:
        graph = module.inlined_graph  # held while its nodes are read: they die with it
    except (AttributeError, RuntimeError):
        return []
    ops: list[tuple[str, tuple]] = []

    def walk(block) -> None:
        for node in block.nodes():
            if node.kind().startswith("aten::"):
                consts = tuple(v.toIValue() if v.node().kind() == "prim::Constant" else None for v in node.inputs())
                ops.append((node.kind(), consts))
            for inner in node.blocks():
                walk(inner)

    walk(graph)
    return ops
