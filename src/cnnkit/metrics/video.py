"""Video-prediction metrics, per predicted frame: MSE and MAE summed over a frame's pixels, and SSIM.

The convention is the one of the Moving MNIST table every video-prediction paper repeats (ConvLSTM
103.3, PredRNN 56.8, SimVP 23.8): pixels in [0, 1], the squared (or absolute) error *summed over the
pixels of a frame* (64x64 = 4096 of them), then averaged over the predicted frames and the clips.
SSIM (Wang et al. 2004, https://ece.uwaterloo.ca/~z70wang/publications/ssim.pdf) uses the standard
settings: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, a data range of 1, computed
where the window fits inside the frame ("valid"), and averaged over those positions and the channels
-- the numbers of ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)``.

Every function takes ``pred`` and ``target`` of shape (B, T, H, W) or (B, T, C, H, W) and returns
one number per clip and frame, (B, T). :class:`VideoPredictionMeter` accumulates them over a data set
and reports the means and the per-step curves.

>>> target = torch.zeros(1, 2, 4, 4); pred = torch.full((1, 2, 4, 4), 0.5)
>>> frame_mse(pred, target)          # 16 pixels x 0.25 per frame
tensor([[4., 4.]], dtype=torch.float64)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnkit.errors import CnnkitError

SSIM_WINDOW = 11  # side of the Gaussian window, pixels
SSIM_SIGMA = 1.5  # its standard deviation, pixels
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise CnnkitError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.dim() not in (4, 5):
        raise CnnkitError(
            f"video metrics take (B, T, H, W) or (B, T, C, H, W) clips; received shape {tuple(pred.shape)}"
        )


def frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each frame's pixels (and channels): (B, T[, C], H, W) -> (B, T), in float64."""
    _check(pred, target)
    return (pred.double() - target.double()).square().flatten(2).sum(2)


def frame_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error summed over each frame's pixels (and channels): (B, T[, C], H, W) -> (B, T), in float64."""
    _check(pred, target)
    return (pred.double() - target.double()).abs().flatten(2).sum(2)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian, float64 (size,): w_i = exp(-(i - c)^2 / 2 sigma^2) / sum."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x.square() / (2 * sigma**2))
    return w / w.sum()


def frame_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each frame: (B, T[, C], H, W) -> (B, T), in float64.

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)), with
    C1 = (K1 L)^2, C2 = (K2 L)^2, L = ``data_range``, and the local means, variances and covariance
    weighted by the Gaussian window (separable, applied as two 1-D convolutions).

    Raises:
        CnnkitError: shapes differ, or a frame is smaller than the 11x11 window.
    """
    _check(pred, target)
    h, w = pred.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise CnnkitError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}; received {h}x{w}")
    b, t = pred.shape[:2]
    x = pred.double().reshape(-1, 1, h, w)  # (B*T*C, 1, H, W)
    y = target.double().reshape(-1, 1, h, w)
    g = gaussian_window()

    def blur(z: torch.Tensor) -> torch.Tensor:  # (n, 1, H, W) -> (n, 1, H-10, W-10)
        z = F.conv2d(z, g.view(1, 1, -1, 1))
        return F.conv2d(z, g.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.reshape(b, t, -1).mean(2)  # mean over channels and positions


class VideoPredictionMeter:
    """Accumulates per-frame MSE, MAE and SSIM over batches of predicted clips.

    >>> m = VideoPredictionMeter()
    >>> m.update(torch.zeros(2, 10, 64, 64), torch.zeros(2, 10, 64, 64))
    >>> m.compute()["mse"]
    0.0
    """

    def __init__(self, ssim: bool = True):
        self.ssim = ssim
        self.sums: dict[str, torch.Tensor] = {}
        self.clips = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` (B, T[, C], H, W), pixels in [0, 1]."""
        pred, target = pred.detach().cpu(), target.detach().cpu()
        values = {"mse": frame_mse(pred, target), "mae": frame_mae(pred, target)}
        if self.ssim:
            values["ssim"] = frame_ssim(pred, target)
        for k, v in values.items():
            s = v.sum(0)  # (T,) summed over the clips
            if k in self.sums and self.sums[k].shape != s.shape:
                raise CnnkitError(
                    f"this batch predicts {s.shape[0]} frames, earlier ones "
                    f"{self.sums[k].shape[0]}; every clip must predict the same number"
                )
            self.sums[k] = self.sums[k] + s if k in self.sums else s
        self.clips += pred.shape[0]

    def compute(self) -> dict:
        """``{"mse", "mae", "ssim"}`` means over frames and clips, and ``"<name>_per_step"`` lists (T,)."""
        if not self.clips:
            raise CnnkitError("no clips were evaluated; the data set is empty")
        out: dict = {}
        for k, s in self.sums.items():
            per_step = s / self.clips
            out[k] = float(per_step.mean())
            out[f"{k}_per_step"] = [float(v) for v in per_step]
        out["clips"] = self.clips
        return out
