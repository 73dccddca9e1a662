"""What differs per task, handed to the one training loop (:mod:`cnnkit.engine`).

- :mod:`.classify` -- image classification: batches with augmentation, cross-entropy, accuracy
  (the same :func:`~cnnkit.tasks.classify.task.evaluate` as ``cnnkit eval``), the deployable Classifier
"""
