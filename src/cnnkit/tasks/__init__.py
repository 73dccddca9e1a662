"""What differs per task, handed to the one training loop (:mod:`cnnkit.engine`): one package per task.

Each task package holds the same files for the same roles (``config``, ``task``, ``train``,
``evaluate``, ``predict``, ``load``, and ``data`` where the task reads its own kind of data):

- :mod:`.classify` -- image classification, fine-tuning, dense heads as convolutions, Keras import
- :mod:`.detect` -- object detection: boxes and classes
- :mod:`.segment` -- semantic segmentation: a class for every pixel
- :mod:`.instance` -- instance segmentation: a box, a class and a mask for every object
- :mod:`.sequence` -- time-series classification with 1-D CNNs
- :mod:`.video` -- clip classification with 3-D CNNs
- :mod:`.video_predict` -- frame prediction
- :mod:`.generate` -- images from noise (a GAN)
- :mod:`.style` -- neural style transfer

Beside them, :mod:`.load` is ``cnnkit.load`` (a run's ``task`` -> that task's loader, in its
``LOADERS``) and :mod:`.export` is what ``cnnkit export`` runs.
"""
