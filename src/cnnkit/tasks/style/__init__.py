"""style: neural style transfer -- one image optimised (Gatys et al.), or a network trained for one style (Johnson et al.).

The files have the same roles in every task (config, data, task, train, predict, load); ``loss``
holds the perceptual loss and ``transfer`` the optimisation of one image.
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.style.config import StyleTrainConfig, TransferConfig
    from cnnkit.tasks.style.load import load_stylizer
    from cnnkit.tasks.style.loss import PerceptualLoss, gram, loss_network, robust_gram, total_variation
    from cnnkit.tasks.style.predict import predict_files, stylize
    from cnnkit.tasks.style.task import StyleTask
    from cnnkit.tasks.style.train import train
    from cnnkit.tasks.style.transfer import TransferResult, transfer, transfer_files

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["StyleTrainConfig", "TransferConfig"],
        "load": ["load_stylizer"],
        "loss": ["PerceptualLoss", "gram", "loss_network", "robust_gram", "total_variation"],
        "predict": ["predict_files", "stylize"],
        "task": ["StyleTask"],
        "train": ["train"],
        "transfer": ["TransferResult", "transfer", "transfer_files"],
    },
)

__all__ = [
    "PerceptualLoss",
    "StyleTask",
    "StyleTrainConfig",
    "TransferConfig",
    "TransferResult",
    "gram",
    "load_stylizer",
    "loss_network",
    "predict_files",
    "robust_gram",
    "stylize",
    "total_variation",
    "train",
    "transfer",
    "transfer_files",
]
