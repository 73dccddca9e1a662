"""Several processes through PyTorch's own engine: ``torchrun --nproc_per_node N -m cnnkit train``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`distributed`
joins the process group (gloo on CPU, nccl on GPU) for the duration of a ``with`` block and always
leaves it. Without those variables it is a no-op describing a single process.
"""

from __future__ import annotations

import gc
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnnkit.engine.config import launched
from cnnkit.errors import CnnkitError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Only rank 0 prints and writes files."""
        return self.rank == 0


@contextmanager
def distributed(device: str | None = None):
    """Yield a :class:`Dist`; inside torchrun, with the process group initialised."""
    world = launched()[1]
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise CnnkitError("--device cuda, but PyTorch sees no CUDA GPU here; use --device cpu")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if use_cuda and world > 1 and torch.cuda.device_count() < local_world:
        raise CnnkitError(
            f"{local_world} processes per node but {torch.cuda.device_count()} GPU(s): "
            "nccl needs one GPU per process; use --nproc_per_node "
            f"{torch.cuda.device_count()}, or --device cpu for gloo on the CPU"
        )
    if world <= 1:
        yield Dist(device=torch.device("cuda" if use_cuda else "cpu"))
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    try:
        yield Dist(rank, world, local_rank, dev)
        # the run's DDP wrappers go while their group is alive (not at the interpreter's exit, where a
        # reducer's last work can abort the process), and no process leaves before the others are done
        gc.collect()
        dist.barrier()
    except BaseException as exc:
        # an error keeps the run's DDP wrappers alive in its traceback's finished frames, past the
        # group's end: they go now (the frames' locals, not their lines, which the traceback keeps)
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
        raise
    finally:
        dist.destroy_process_group()


def share(n: int, d: Dist) -> tuple[int, int]:
    """(start, stop) of this rank's part of ``n`` samples: every sample in one part, the parts'
    sizes differing by at most one (``n`` = 13 over 2 processes: 6 and 7)."""
    return n * d.rank // d.world, n * (d.rank + 1) // d.world


def batch_length(batch) -> int | None:
    """The samples in a global batch: the length of its first tensor or list (None: neither)."""
    if torch.is_tensor(batch):
        return batch.shape[0] if batch.dim() else None
    if isinstance(batch, list):
        return len(batch)
    for part in batch.values() if isinstance(batch, dict) else batch if isinstance(batch, tuple) else ():
        n = batch_length(part)
        if n is not None:
            return n
    return None


def shard(indices: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous share of a global batch (a distributed sampler over a tensor set)."""
    start, stop = share(indices.shape[0], d)
    return indices[start:stop]


def shard_batch(batch, d: Dist):
    """This rank's share of a global batch -- a tensor, or a tuple / list / dict of them (lists of
    per-sample items are sliced like tensors) -- on this rank's device. Every sample goes to one
    rank (:func:`share`)."""
    if torch.is_tensor(batch):
        return shard(batch, d).to(d.device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: shard_batch(v, d) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(shard_batch(v, d) for v in batch)
    if isinstance(batch, list):
        start, stop = share(len(batch), d)
        return [v.to(d.device) if torch.is_tensor(v) else v for v in batch[start:stop]]
    return batch


def shard_weight(n: int | None, d: Dist) -> float:
    """What this rank's loss (a mean over its share of a global batch of ``n`` samples) is multiplied
    by, so that DDP's average of the ranks' gradients is the gradient of the mean over the whole
    batch: ``world * share / n`` (1 when the batch splits evenly or the process is alone).

    Raises:
        CnnkitError: a batch of fewer samples than processes (a rank would train on none).
    """
    if d.world == 1 or n is None:
        return 1.0
    if n < d.world:
        raise CnnkitError(
            f"a training batch of {n} sample(s) cannot be split over {d.world} processes; give a "
            f"--batch-size of at least {d.world} (and a training split of as many), or fewer processes"
        )
    start, stop = share(n, d)
    return d.world * (stop - start) / n


def pool(pooled, d: Dist, total: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The parts of a :class:`~cnnkit.engine.task.Pooled` loss on the whole global batch: its sums
    added over the processes, each carrying the gradient of this process's share alone.

    Each sum becomes ``own + (total - own)`` with the other processes' part detached, so the loss
    has the whole batch's value on every process and this process's gradient is that of the whole
    batch's loss through its own samples. ``world`` times it (DDP averages the processes' gradients)
    makes the processes' gradients add up to one process's gradient on the whole batch, whatever the
    loss divides by.

    Args:
        pooled: the task's sums and the function that combines them.
        d: this process; alone, the sums are combined as they are.
        total: the sums of every process, flattened in the order of ``pooled.sums`` (default: added
            over the process group here, with one all-reduce).

    Returns:
        ``pooled.combine`` of the whole batch's sums: ``{"loss": ..., ...}``.
    """
    if d.world == 1 and total is None:
        return pooled.parts()
    own = {k: v.float() for k, v in pooled.sums.items()}
    if total is None:
        total = all_sum(torch.cat([v.detach().reshape(-1) for v in own.values()]), d)
    whole, at = {}, 0
    for k, v in own.items():
        whole[k] = v + (total[at : at + v.numel()].view_as(v) - v.detach())
        at += v.numel()
    return pooled.combine(whole)


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t
