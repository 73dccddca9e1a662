"""Evaluation metrics, one file per task: ``classification`` (confusion counts, the most confident
mistakes), ``detection`` (COCO through pycocotools, and VOC AP), ``instance`` (COCO mask AP),
``segmentation`` (IoU, mIoU, boundary IoU) and ``video`` (MSE, MAE and SSIM per predicted frame)."""
