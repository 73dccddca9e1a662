"""Evaluation metrics, one file per task: ``detection`` (COCO through pycocotools, and VOC AP), ``segmentation`` (IoU, mIoU, boundary IoU)."""
