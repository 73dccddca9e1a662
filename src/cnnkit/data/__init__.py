"""Reading and augmenting data: files in, tensors out.

- :mod:`.images` -- the one guarded reader of an image file the user hands over
- :mod:`.imageset` -- :class:`~cnnkit.data.imageset.ImageSet`, a classification data set in memory (uint8 images, labels)
- :mod:`.datasets` -- the built-in data sets by name; :mod:`.idx` reads MNIST's IDX files
- :mod:`.imagefolder` -- a folder of the user's own images, ``root/<class>/<image>``
- :mod:`.detection`, :mod:`.segmentation`, :mod:`.cocomask`, :mod:`.voc`, :mod:`.pennfudan`,
  :mod:`.scenes` -- boxes and masks: COCO, YOLO, Pascal VOC, Penn-Fudan, scenes of MNIST digits;
  the detection augmentations, which move the boxes with the pixels
- :mod:`.series` -- time series (UCR/UEA ``.tsv`` and ``.ts``, CSV); :mod:`.video` -- clips, Moving MNIST
- :mod:`.augment`, :mod:`.augment_config` -- batched, seeded image augmentation on the training
  device, and its settings
- :mod:`.constants` -- constants the data and the models share
- :mod:`.digest` -- the sha256 of data as a run reads it, what a run records of each part of its data
"""
