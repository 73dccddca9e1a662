"""Transfer learning on your own images, and dense heads turned into convolutions.

- :func:`finetune` -- a pretrained network on new classes, in stages (head, top block, all)
- :func:`to_fcn` -- Flatten+Linear heads as convolutions: a classifier that slides over big images
- :class:`ImageAugment` -- Keras ImageDataGenerator-style batched augmentation
- :func:`preprocess_for` -- the input size and mean/std a zoo model's weights expect
- :func:`finetune_preprocess` -- the same at the size fine-tuning uses (9/7 of it for pretrained weights)
"""

from cnnkit.transfer.augment import NOTES_AUGMENT, ImageAugment
from cnnkit.transfer.fcn import to_fcn, total_stride
from cnnkit.transfer.finetune import STAGES, FinetuneConfig, StagePlan, evaluate, finetune, plan_stage
from cnnkit.transfer.preprocess import Preprocess, finetune_preprocess, normalize, preprocess_for

__all__ = ["FinetuneConfig", "ImageAugment", "NOTES_AUGMENT", "Preprocess", "STAGES", "StagePlan",
           "evaluate", "finetune", "finetune_preprocess", "normalize", "plan_stage", "preprocess_for", "to_fcn", "total_stride"]
