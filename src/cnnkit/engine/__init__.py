"""The training engine: one loop (:func:`fit`) that every task and fine-tuning stage runs through.

- :mod:`.task` -- the :class:`Task` protocol (batches, loss, evaluate, deployable, describe) and
  the :class:`Plan` of :class:`Phase` s the loop trains by (what trains, at which learning rates)
- :mod:`.loop` -- :func:`fit`: progress, validation, EMA, NaN guard, checkpoints, resume, DDP
- :mod:`.config` -- :class:`~cnnkit.engine.config.RunConfig` (the fields every task shares), the
  command-line flags made from it, the process's threads and freed-memory policy
- :mod:`.optim` -- optimizers and learning-rate schedules; :mod:`.precision` -- fp32 or bf16 autocast
- :mod:`.runfolder` -- the run folder: atomic writes, checkpoints without pickles, exact resume
- :mod:`.distributed`, :mod:`.ema` -- processes under torchrun; weight averaging
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.engine.loop import FitResult, fit, fit_run, save_run
    from cnnkit.engine.optim import single_phase_plan
    from cnnkit.engine.task import Data, Phase, Plan, Pooled, Setup, Task

# imported on first use: the torch-free engine.config (the CLI's parsers) must not load the loop
lazy_exports(
    __name__,
    {
        "loop": ["FitResult", "fit", "fit_run", "save_run"],
        "optim": ["single_phase_plan"],
        "task": ["Data", "Phase", "Plan", "Pooled", "Setup", "Task"],
    },
)

__all__ = [
    "Data",
    "FitResult",
    "Phase",
    "Plan",
    "Pooled",
    "Setup",
    "Task",
    "fit",
    "fit_run",
    "save_run",
    "single_phase_plan",
]
