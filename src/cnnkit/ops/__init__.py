"""Pure tensor functions for dense tasks, tested against references: boxes, IoU, NMS, RoIAlign."""

from cnnkit.ops.boxes import (
    FORMATS,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    box_iou_elementwise,
    generalized_box_iou,
    generalized_box_iou_elementwise,
    nms,
)
from cnnkit.ops.roi import roi_align, roi_pool

__all__ = [
    "FORMATS",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "box_iou_elementwise",
    "generalized_box_iou",
    "generalized_box_iou_elementwise",
    "nms",
    "roi_align",
    "roi_pool",
]
