"""generate: images from noise -- DCGAN on MNIST digits, unconditional or of a chosen class.

The files have the same roles in every task (config, task, train, evaluate, predict, load).
"""

from typing import TYPE_CHECKING

from cnnkit._lazy import lazy_exports

if TYPE_CHECKING:
    from cnnkit.tasks.generate.config import GenerateConfig
    from cnnkit.tasks.generate.evaluate import evaluate_run, frechet_distance, mnist_score
    from cnnkit.tasks.generate.load import load_generator
    from cnnkit.tasks.generate.predict import Sampler, predict, write_grid
    from cnnkit.tasks.generate.task import GAN, GenerateTask, build_gan
    from cnnkit.tasks.generate.train import train

# imported on first use: `cnnkit --help` builds its parsers from the torch-free config module
lazy_exports(
    __name__,
    {
        "config": ["GenerateConfig"],
        "evaluate": ["evaluate_run", "frechet_distance", "mnist_score"],
        "load": ["load_generator"],
        "predict": ["Sampler", "predict", "write_grid"],
        "task": ["GAN", "GenerateTask", "build_gan"],
        "train": ["train"],
    },
)

__all__ = [
    "GAN",
    "GenerateConfig",
    "GenerateTask",
    "Sampler",
    "build_gan",
    "evaluate_run",
    "frechet_distance",
    "load_generator",
    "mnist_score",
    "predict",
    "train",
    "write_grid",
]
