"""Moved to :mod:`cnnkit.engine.distributed` (the engine owns processes); this name keeps working."""

from cnnkit.engine.distributed import Dist, all_sum, distributed, shard

__all__ = ["Dist", "all_sum", "distributed", "shard"]
