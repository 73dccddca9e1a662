"""Instance masks on the single-stage detector: a Mask R-CNN-style mask head on RoIAlign features.

Mask R-CNN: He et al., "Mask R-CNN", ICCV 2017, https://arxiv.org/abs/1703.06870.

Each box (a ground-truth box or a jittered copy of one while training, a kept detection at inference)
takes 14 x 14 RoIAlign features from the finest map of the detector's FPN-lite neck (stride 8: at
Penn-Fudan's 320-384 px the paper's level rule ``k = 4 + log2(sqrt(wh) / 224)`` sends every
pedestrian there), a small FCN (3x3 convs) keeps the 14 x 14 layout, a 2x transposed conv brings it
to 28 x 28 and a 1x1 conv gives one mask logit map per class (one map, class-agnostic, for a single
class). At inference :func:`paste_masks` resizes each 28 x 28 mask into its box in the image
(bilinear) and thresholds it at 0.5.

The detector is used by composition: :class:`MaskDetector` holds a
:class:`~cnnkit.models.detection.Detector` unchanged (its loss, decoding and state dict under
``detector.``) and runs its normalise -> features -> neck -> head itself, to keep the neck's maps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnkit.models.detection import Detector, decode, flip_merge, grid_points
from cnnkit.ops import roi_align

ROI_SIZE = 14  # RoIAlign output side (the paper's 14 x 14)


class MaskHead(nn.Module):
    """RoI features (K, C, 14, 14) -> mask logits (K, num_masks, 28, 28).

    ``convs`` 3x3 conv + ReLU layers of ``width`` channels (the paper: 4 of 256), a stride-2 2x2
    transposed conv + ReLU, then a 1x1 conv to ``num_masks`` maps (num_classes, or 1 class-agnostic).
    """

    def __init__(self, in_channels: int, num_masks: int, width: int = 64, convs: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1), nn.ReLU(inplace=True)]
        self.fcn = nn.Sequential(*layers)
        self.up = nn.ConvTranspose2d(width if convs else in_channels, width, 2, stride=2)
        self.logits = nn.Conv2d(width, num_masks, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fcn(x)  # (K, width, 14, 14)
        x = F.relu(self.up(x))  # (K, width, 28, 28)
        return self.logits(x)  # (K, num_masks, 28, 28)


class MaskDetector(nn.Module):
    """A :class:`Detector` plus a :class:`MaskHead` on its finest neck map.

    ``forward(x)`` returns the detector's raw output (see :class:`Detector`); ``forward(x, rois)``
    with rois (K, 5) in input pixels adds ``masks``: (K, num_masks, 28, 28) logits. One forward does
    both, so that a DDP-wrapped model computes every gradient inside its forward.
    """

    def __init__(
        self, detector: Detector, mask_width: int = 64, mask_convs: int = 4, class_agnostic: bool | None = None
    ):
        super().__init__()
        self.detector = detector
        self.num_classes = detector.num_classes
        self.class_agnostic = detector.num_classes == 1 if class_agnostic is None else class_agnostic
        width = detector.neck.lateral[0].out_channels
        self.mask_stride = detector.strides[0]
        self.mask_head = MaskHead(width, 1 if self.class_agnostic else detector.num_classes, mask_width, mask_convs)

    @property
    def strides(self) -> list[int]:
        return self.detector.strides

    @property
    def normalise(self) -> nn.Module:
        return self.detector.normalise

    def forward(self, x: torch.Tensor, rois=None) -> dict[str, torch.Tensor]:
        maps = self.maps(x)
        out = self.detections(maps)
        if rois is not None:
            out["masks"] = self.mask_logits(maps, rois)
        return out

    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, C, H, W) in [0, 1] -> the neck's maps [(B, width, H/s, W/s)], one per stride."""
        d = self.detector
        return d.neck(d.features(d.normalise(x)))

    def detections(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The detector's raw output (as ``Detector.forward``) from the neck's maps."""
        d = self.detector
        out = d.head(maps, d.strides)
        out["points"], out["strides"] = grid_points([m.shape[-2:] for m in maps], d.strides, maps[0].device)
        return out

    def mask_logits(self, maps: list[torch.Tensor], rois) -> torch.Tensor:
        """rois (K, 5) ``(image index, x1, y1, x2, y2)`` or per-image (L_i, 4) boxes, input pixels
        -> (K, num_masks, 28, 28) logits: RoIAlign 14 x 14 on the finest map, then the mask head."""
        feats = roi_align(maps[0], rois, ROI_SIZE, 1 / self.mask_stride, sampling_ratio=2, aligned=True)
        return self.mask_head(feats).float()  # (K, C, 14, 14) -> (K, num_masks, 28, 28), fp32 under autocast

    def select(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(K, num_masks, 28, 28) -> (K, 28, 28): each box's own class map (the only one if agnostic)."""
        if self.class_agnostic:
            return logits[:, 0]
        return logits[torch.arange(len(labels), device=logits.device), labels]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, **decode_args) -> list[dict[str, torch.Tensor]]:
        """Images (B, C, H, W) in [0, 1] -> per image boxes / scores / labels (as :func:`decode`),
        ``masks`` (k, 28, 28) probabilities of each kept box (paste them with :func:`paste_masks`) and
        ``mask_scores``: each box's score times its mask's :func:`maskness`, what ranks the masks.
        ``tta="flip"`` among the decoding arguments: the boxes from the image's and its mirror's
        outputs averaged (:func:`~cnnkit.models.detection.flip_merge`)."""
        tta = decode_args.pop("tta", "")
        maps = self.maps(x)
        raw = self.detections(maps)
        if tta == "flip":  # the boxes from both; the masks from this image's maps
            raw = flip_merge(raw, self.detections(self.maps(x.flip(-1))), x.shape[-1])
        dets = decode(raw, tuple(x.shape[-2:]), **decode_args)
        probs = torch.zeros(0, 28, 28, device=x.device)
        if sum(len(det["boxes"]) for det in dets):
            labels = torch.cat([det["labels"] for det in dets])
            probs = torch.sigmoid(self.select(self.mask_logits(maps, [det["boxes"] for det in dets]), labels))
        for det, p in zip(dets, probs.split([len(det["boxes"]) for det in dets])):
            det["masks"] = p
            det["mask_scores"] = det["scores"] * maskness(p)
        return dets


def maskness(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(K, m, m) mask probabilities -> (K,): the mean probability over each mask's own pixels (those
    >= ``threshold``; 0 for an empty mask). SOLOv2's "maskness" (Wang et al. 2020,
    https://arxiv.org/abs/2003.10152): a box scored high whose mask is unsure ranks lower among the masks.
    On Penn-Fudan's test photos (the 24-epoch model) mask AP 0.484 -> 0.493 ranked by score x maskness."""
    fg = probs >= threshold
    return (probs * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1)


def paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Masks (K, m, m) of probabilities over their boxes (K, 4) xyxy -> (K, H, W) bool in the image.

    The m x m grid spans its box exactly: image pixel (i, j), centre (j + 0.5, i + 0.5), reads the
    mask bilinearly at ((j + 0.5 - x1) / (x2 - x1) * m - 0.5, ...) in mask cells (align_corners=False),
    zero outside the box; a pixel is in the instance when that value is >= ``threshold``.
    Only the pixels of each box's bounding window are computed.
    """
    h, w = size
    k, _m = masks.shape[0], masks.shape[-1]
    out = torch.zeros(k, h, w, dtype=torch.bool, device=masks.device)
    for i in range(k):
        x1, y1, x2, y2 = boxes[i].tolist()
        if x2 <= x1 or y2 <= y1:
            continue
        c0, c1 = max(0, int(x1)), min(w, int(torch.tensor(x2).ceil()))
        r0, r1 = max(0, int(y1)), min(h, int(torch.tensor(y2).ceil()))
        if c1 <= c0 or r1 <= r0:
            continue
        xs = (torch.arange(c0, c1, device=masks.device, dtype=masks.dtype) + 0.5 - x1) / (x2 - x1) * 2 - 1
        ys = (torch.arange(r0, r1, device=masks.device, dtype=masks.dtype) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None]  # (1, r, c, 2) x, y
        window = F.grid_sample(
            masks[i][None, None].to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0, 0]  # (r, c)
        out[i, r0:r1, c0:c1] = window >= threshold
    return out
