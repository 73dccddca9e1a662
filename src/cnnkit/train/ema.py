"""Moved to :mod:`cnnkit.engine.ema` (the engine owns weight averaging); this name keeps working."""

from cnnkit.engine.ema import EMA

__all__ = ["EMA"]
