"""The analyser: what every layer does to the shape, its parameters and MACs, and the memory of
inference and of a training step, exactly as PyTorch allocates it, with the textbook's hand method beside.

Record (``trace``, ``backend``, ``fastpath``) -> aggregate (``summary``, ``textbook``, ``memory``,
``timeline``) -> format (``report``). Measured beside it: what PyTorch really allocates and each
layer's time (``measure``), and where a training run's seconds go (``profile``).
"""

from cnnkit.analysis.memory import memory_plan
from cnnkit.analysis.summary import Summary, summary

__all__ = ["Summary", "memory_plan", "summary"]
