"""Evaluation metrics for the dense tasks (detection: COCO through pycocotools, and VOC AP)."""
