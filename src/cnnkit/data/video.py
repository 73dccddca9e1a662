"""Video clips: the Moving MNIST generator (Srivastava, Mansimov & Salakhutdinov 2015,
https://arxiv.org/abs/1502.04681) and streamed readers for a user's own clips.

Moving MNIST follows the authors' released generator (``BouncingMNISTDataHandler`` in their
``unsup_video_lstm`` code):

- a clip is ``num_frames`` = 20 frames of 64x64; each holds ``num_digits`` = 2 MNIST digits of 28x28;
- each digit starts at a uniform random point of the unit square and moves at a uniform random angle
  with a fixed speed of ``step_length`` = 0.1 per frame; the position is stepped *before* the first
  frame is drawn, as in the released code;
- a coordinate that reaches 0 or 1 is clamped there and its velocity component flips sign (a bounce);
- the unit square is scaled to the 36x36 canvas of top-left corners (64 - 28) and truncated to whole
  pixels, so the speed is 3.6 pixels a frame and every digit stays entirely inside the frame;
- overlapping digits combine with the pixel-wise maximum (the released ``Overlap``), in uint8;
- digits are drawn as the released code does: walking through a shuffled copy of the digit pool,
  reshuffling when it is used up (each test digit appears in exactly two clips of the test set).

What differs from the released test file ``mnist_test_seq.npy`` (10,000 clips, not downloadable here):
its clips came from the authors' random stream, so no clip is identical; ours are drawn from a fixed
seed (:data:`TEST_SEED`) and from MNIST's *test* digits, so no training digit is seen at test time.
The statistics (speed, bounce, combine) are the same: on 10,000 clips of training digits, predicting
black frames scores 171.7 per frame (MSE summed over a frame) and repeating the last input 282.7 (the
published procedure gives 171 and 283); the test set scores 174.2 and 286.6, because MNIST's test
digits carry 1.7% more ink (the sum of squared pixels averages 89.3 against 87.8).

The randomness of a whole set (start points, angles, digit choices: a few numbers per clip) is drawn
once from ``numpy.random.default_rng`` seeded with ``seed`` (and the epoch); pixels are rendered on
demand, one clip or one batch at a time, so a set of 10,000 clips holds 1.6 MB of trajectories beside
the digits, not the 819 MB of its pixels. :meth:`MovingMnist.set_epoch` redraws the set for a new epoch
(``fresh=True``): training then sees new clips every epoch.

User clips (:class:`VideoClips`): a folder whose entries are clips, each either a sub-folder of frame
images (in the order of their names, numbers by value: ``frame2.png`` before ``frame10.png``) or a
``.npy`` array of shape (T, H, W) or (T, C, H, W). Clips are read one at a time (``.npy``
memory-mapped), so memory does not grow with the number of clips.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import Dataset

from cnnkit.data.datasets import load_dataset
from cnnkit.data.images import read_image
from cnnkit.errors import CnnkitError, check_fits, human_bytes, memory_available, not_a_file, short_error

TEST_SEED = 2015  # the fixed seed of the 10,000-clip test set
TEST_SIZE = 10_000  # clips in the test set, as the released file
NUM_CLASSES = 10  # digits 0-9: the multi-label target of the classification task
BLOCK = 1000  # clips whose trajectories come from one seed (see MovingMnist.set_epoch)
_SPLITS = ("train", "val", "trainval", "test")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# a clip too large for the memory available: what the user can change (the run decides the frames it reads)
CLIP_FIX = "cut the clip to fewer or smaller frames (a clip of the frames the run takes is enough)"


@dataclass(frozen=True)
class MovingMnistSpec:
    """The generator's parameters; the defaults are the published ones."""

    num_frames: int = 20  # frames per clip (10 observed + 10 to predict)
    image_size: int = 64  # side of a square frame, pixels
    num_digits: int = 2  # digits per clip
    step_length: float = 0.1  # speed, as a fraction of the canvas of top-left corners per frame
    digit_size: int = 28  # side of an MNIST digit, pixels

    def check(self) -> None:
        """Raise a :class:`CnnkitError` for parameters that cannot make a clip."""
        if self.num_frames < 1 or self.num_digits < 1:
            raise CnnkitError(
                f"Moving MNIST needs num_frames >= 1 and num_digits >= 1; received: "
                f"num_frames={self.num_frames}, num_digits={self.num_digits}"
            )
        if self.image_size < self.digit_size:
            raise CnnkitError(
                f"Moving MNIST frames must be at least the digit's {self.digit_size} pixels; "
                f"received: image_size={self.image_size}"
            )
        if not 0 <= self.step_length <= 1:
            raise CnnkitError(
                f"step_length is a fraction of the canvas per frame, in [0, 1]; "
                f"received: step_length={self.step_length}"
            )


def trajectories(rng: np.random.Generator, n: int, spec: MovingMnistSpec = MovingMnistSpec()) -> np.ndarray:
    """Top-left corners of ``n`` bouncing digits: int16 (n, T, 2) as (row, column), in [0, size - 28].

    Vectorised over digits, a loop over the T frames (the released code's loop, with its order of
    draws: start row, start column, angle; each for all ``n`` digits).
    """
    canvas = spec.image_size - spec.digit_size
    y, x = rng.random(n), rng.random(n)
    theta = rng.random(n) * 2 * np.pi
    v = np.stack([np.sin(theta), np.cos(theta)], 1) * spec.step_length  # (n, 2) per-frame step
    pos = np.stack([y, x], 1)  # (n, 2) in the unit square
    out = np.empty((n, spec.num_frames, 2), np.float64)
    for t in range(spec.num_frames):
        pos = pos + v  # step first, then draw
        low, high = pos <= 0, pos >= 1
        v = np.where(low | high, -v, v)  # bounce
        pos = np.clip(pos, 0.0, 1.0)
        out[:, t] = pos
    return (canvas * out).astype(np.int16)  # truncation, as astype(int32)


def _digit_walk(rng: np.random.Generator, pool: int, n: int) -> np.ndarray:
    """``n`` indices into a pool of ``pool`` digits: consecutive shuffled passes over the pool."""
    passes = math.ceil(n / pool)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]


def render(digits: torch.Tensor, positions: torch.Tensor, image_size: int = 64) -> torch.Tensor:
    """Paste digits at their positions, combining overlaps with the maximum.

    Each frame is seen through a sliding-window view of its (size - 27)^2 possible 28x28 windows, so a
    digit is pasted by indexing one window per frame: no per-pixel index is built. Clips are rendered
    in chunks of 256, which keep the windows in cache (10,000 clips: ~2 s on one core).

    Args:
        digits: uint8 (N, D, 28, 28), the D digits of each of N clips.
        positions: integer (N, D, T, 2) top-left corners (row, column) of each digit in each frame.
        image_size: side of the square frame.

    Returns:
        uint8 (N, T, image_size, image_size).
    """
    n, d, t = positions.shape[:3]
    s = digits.shape[-1]
    digits, positions = digits.numpy(), positions.numpy()
    out = np.empty((n, t, image_size, image_size), np.uint8)
    for lo in range(0, n, 256):
        chunk = out[lo : lo + 256]
        chunk.fill(0)
        win = sliding_window_view(chunk, (s, s), axis=(2, 3), writeable=True)  # (n, T, 37, 37, 28, 28)
        clip, frame = np.arange(len(chunk))[:, None], np.arange(t)[None]  # (n, 1), (1, T)
        for k in range(d):
            top, left = positions[lo : lo + 256, k, :, 0], positions[lo : lo + 256, k, :, 1]  # (n, T)
            ink = digits[lo : lo + 256, k, None]  # (n, 1, 28, 28)
            win[clip, frame, top, left] = np.maximum(win[clip, frame, top, left], ink)
    return torch.from_numpy(out)


def digits_present(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(N, D) digit labels -> float (N, num_classes) multi-hot: 1 for every digit that appears."""
    out = torch.zeros(labels.shape[0], num_classes)
    return out.scatter_(1, labels.long(), 1.0)


class MovingMnist(Dataset):
    """Moving MNIST clips drawn from a seed; items are ``(clip, target)``.

    ``clip`` is uint8 (T, 64, 64) (float in [0, 1] with ``as_float``); ``target`` is the float (10,)
    multi-hot of the digits that appear (the classification task's target; the prediction task uses
    the clip itself). :meth:`batch` renders many clips at once (about 2 s for 10,000 on one core).

    Args:
        split: MNIST digits to draw from: ``train`` (the first 55,000 training digits), ``val`` (the
            last 5,000), ``trainval`` (all 60,000) or ``test`` (the 10,000 test digits).
        num_sequences: clips in the set (an epoch); default 10,000.
        seed: seed of the draws; the ``test`` split defaults to :data:`TEST_SEED`, others to 0.
        fresh: redraw the clips at every :meth:`set_epoch` (a new epoch sees new clips); otherwise
            the set is fixed.
        data_dir: the folder holding ``mnist/`` (see :func:`cnnkit.data.datasets.default_data_dir`).
        spec: the generator's parameters (the published ones by default).
        as_float: items as float32 in [0, 1] instead of uint8.
        download: fetch MNIST when it is missing.

    Raises:
        CnnkitError: a bad split, size or spec; MNIST missing and not downloadable.

    Example:
        >>> test = MovingMnist("test")                      # doctest: +SKIP
        >>> clips, targets = test.batch(range(8))           # doctest: +SKIP
        >>> clips.shape, clips.dtype, targets.shape         # doctest: +SKIP
        (torch.Size([8, 20, 64, 64]), torch.uint8, torch.Size([8, 10]))
    """

    def __init__(
        self,
        split: str = "train",
        num_sequences: int = TEST_SIZE,
        seed: int | None = None,
        fresh: bool = False,
        data_dir: str | os.PathLike | None = None,
        spec: MovingMnistSpec = MovingMnistSpec(),
        as_float: bool = False,
        download: bool = True,
    ):
        if split not in _SPLITS:
            raise CnnkitError(f"unknown Moving MNIST split {split!r}; use one of {', '.join(_SPLITS)}")
        if isinstance(num_sequences, bool) or not isinstance(num_sequences, int) or num_sequences < 1:
            raise CnnkitError(f"num_sequences must be an integer >= 1; received: {num_sequences!r}")
        spec.check()
        # the trajectories of every clip are drawn up front (int16, BLOCK clips at a time, kept and
        # then concatenated) with three int64 indices per digit: refused before a billion clips
        # grow the process until the system kills it
        blocks = math.ceil(num_sequences / BLOCK)
        need = blocks * BLOCK * spec.num_digits * spec.num_frames * 2 * 2 * 2 + num_sequences * spec.num_digits * 24
        if need > memory_available():
            raise CnnkitError(
                f"{num_sequences:,} Moving MNIST clips of {spec.num_frames} frames need {human_bytes(need)}, more "
                f"than the {human_bytes(memory_available())} of memory available; ask for fewer clips or frames"
            )
        mnist = load_dataset("mnist", split, data_dir=data_dir, download=download)
        self.digits = mnist.images[:, 0]  # (M, 1, 28, 28) -> (M, 28, 28) uint8
        self.digit_labels = mnist.labels  # (M,)
        if self.digits.shape[-1] != spec.digit_size:
            raise CnnkitError(
                f"MNIST digits are {tuple(self.digits.shape[1:])}, expected "
                f"{spec.digit_size}x{spec.digit_size}: check {data_dir}"
            )
        self.split, self.spec, self.fresh, self.as_float = split, spec, fresh, as_float
        self.num_sequences = num_sequences
        self.seed = (TEST_SEED if split == "test" else 0) if seed is None else seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the clips of ``epoch`` (the same clips for every epoch unless ``fresh``).

        Trajectories are drawn in blocks of :data:`BLOCK` clips, each from its own seed, and digits
        from one walk per seed, so a smaller set is a prefix of a larger one with the same seed: the
        first 500 clips of the 10,000-clip test set are the 500-clip test set.
        """
        key = [self.seed, epoch] if self.fresh else [self.seed]
        n, d = self.num_sequences, self.spec.num_digits
        blocks = [
            trajectories(np.random.default_rng([*key, 0, b]), BLOCK * d, self.spec) for b in range(math.ceil(n / BLOCK))
        ]
        pos = np.concatenate(blocks)[: n * d]  # (N*D, T, 2)
        self.positions = torch.from_numpy(pos).view(n, d, self.spec.num_frames, 2)
        walk = _digit_walk(np.random.default_rng([*key, 1]), len(self.digits), n * d)
        self.index = torch.from_numpy(walk).view(n, d)  # (N, D) rows of ``digits``
        self.labels = self.digit_labels[self.index]  # (N, D) the digits of each clip

    def __len__(self) -> int:
        return self.num_sequences

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Render the clips at ``indices``: ((B, T, H, W) uint8 or float, (B, 10) multi-hot)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        clips = render(self.digits[self.index[idx]], self.positions[idx], self.spec.image_size)
        if self.as_float:
            clips = clips.float().div_(255)
        return clips, digits_present(self.labels[idx])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip {i} of a set of {len(self)}")
        clips, target = self.batch([i % len(self)])
        return clips[0], target[0]


def frame_order(path: Path) -> tuple:
    """The sort key of a clip's frame files: their names, the numbers in them compared by value, so
    ``frame2.png`` comes before ``frame10.png`` (zero-padded names keep their order).

    >>> [p.name for p in sorted(map(Path, ["f10.png", "f2.png", "f1.png"]), key=frame_order)]
    ['f1.png', 'f2.png', 'f10.png']
    """
    parts = re.split(r"(\d+)", path.name)  # text at even places, digits at odd ones: the types line up
    return [int(s) if i % 2 else s for i, s in enumerate(parts)], path.name


def resize_clip(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Frames (T, C, H, W) in [0, 1] resized to ``size`` (H, W): bilinear and antialiased, as PIL's
    bilinear resizes a frame image, so a clip reads the same from a ``.npy`` array and from frames."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return F.interpolate(clip, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


class VideoClips(Dataset):
    """A user's clips, read one at a time: items are float32 (T, C, H, W) in [0, 1].

    ``root`` holds one entry per clip, sorted by name: a sub-folder of frame images (in the order
    of :func:`frame_order`, read through :func:`cnnkit.data.images.read_image`) or a ``.npy`` array (T, H, W) or
    (T, C, H, W) of uint8 (0-255) or floats in [0, 1], memory-mapped and never unpickled. Hidden
    entries (starting with ``.``) are skipped.

    Args:
        root: the folder of clips.
        channels: channels of every clip (1 grey, 3 RGB); frame images are converted to it, arrays
            must have it.
        size: (H, W) to resize every frame to (bilinear, antialiased: :func:`resize_clip`); None keeps
            each clip's own size.
        num_frames: keep the first ``num_frames`` frames (a clip with fewer is an error); None keeps all.
            With ``size`` and ``num_frames`` every clip has one shape and batches stack.
        clips: these clips only (frame folders or ``.npy`` files, anywhere) instead of every entry
            of ``root``, whose other entries are then never looked at.

    Raises:
        CnnkitError: naming the file: no clips, an entry that is neither, an array of the wrong
            shape, dtype or range or larger than the memory available, an unreadable or damaged
            file, frames of different sizes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        channels: int = 1,
        size: tuple[int, int] | None = None,
        num_frames: int | None = None,
        clips: list[str | os.PathLike] | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise CnnkitError(
                f"clip folder not found: {self.root}; give a folder holding one sub-folder of "
                "frames or one .npy array per clip"
            )
        if channels not in (1, 3):
            raise CnnkitError(f"clips have 1 (grey) or 3 (RGB) channels; received: channels={channels}")
        if num_frames is not None and num_frames < 1:
            raise CnnkitError(f"num_frames must be >= 1 or None; received: num_frames={num_frames}")
        self.channels, self.num_frames = channels, num_frames
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.clips: list[Path] = [Path(c) for c in clips] if clips is not None else []
        for p in sorted(self.root.iterdir()) if clips is None else []:
            if p.name.startswith("."):
                continue
            if not (p.is_dir() or p.suffix.lower() == ".npy"):
                raise CnnkitError(f"{p} is neither a folder of frames nor a .npy array; move it out of {self.root}")
            self.clips.append(p)
        if not self.clips:
            raise CnnkitError(
                f"{self.root} holds no clips; put one sub-folder of frame images or one .npy "
                "array (T, H, W) or (T, C, H, W) per clip in it"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def check(self) -> None:
        """Read every clip once: a damaged, short or out-of-range clip is its one-line error here,
        not when training or testing reaches it.

        Raises:
            CnnkitError: the first clip that cannot be read as the set's clips are.
        """
        for i in range(len(self)):
            self[i]

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.clips[i]
        clip = self._read_frames(path) if path.is_dir() else self._read_npy(path)  # (T, C, H, W)
        if self.num_frames is not None:
            if clip.shape[0] < self.num_frames:
                raise CnnkitError(
                    f"{path} has {clip.shape[0]} frames, fewer than the {self.num_frames} asked for; give "
                    "longer clips or ask for fewer frames (--frames; num_frames= in Python)"
                )
            clip = clip[: self.num_frames]
        if self.size is not None:
            clip = resize_clip(clip, self.size)
        return clip.contiguous()

    def _read_frames(self, folder: Path) -> torch.Tensor:
        frames = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=frame_order)
        if not frames:
            raise CnnkitError(f"{folder} holds no frame images; put the clip's frames in it (named in their order)")
        for p in frames:
            if p.is_dir() or p.suffix.lower() not in _IMAGE_SUFFIXES:
                raise CnnkitError(f"{p} is not a frame image (PNG, JPEG, ...); a clip folder holds only its frames")
        if self.num_frames is not None:
            frames = frames[: self.num_frames]  # read only what is used
        first = read_image(frames[0], self.channels, self.size)  # (C, H, W) in [0, 1]
        # each frame passes the image reader's guard, their number does not: the clip's float32 tensor
        # (every frame the first one's size) is refused before it is made, as a .npy clip's copy is
        shape = (len(frames), *first.shape)
        check_fits(
            math.prod(shape) * 4,
            f"{folder} ({'x'.join(map(str, shape))} values of {len(frames)} frames, as float32)",
            CLIP_FIX,
        )
        clip = torch.empty(shape)  # (T, C, H, W), filled frame by frame: no second copy to stack
        clip[0] = first
        for i, p in enumerate(frames[1:], 1):
            x = read_image(p, self.channels, self.size)
            if x.shape != first.shape:
                raise CnnkitError(
                    f"{p} is {x.shape[2]}x{x.shape[1]} but {frames[0].name} is "
                    f"{first.shape[2]}x{first.shape[1]}: frames of one clip share a size "
                    "(or pass size=(H, W))"
                )
            clip[i] = x
        return clip

    def _read_npy(self, path: Path) -> torch.Tensor:
        not_a_file(path)
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
        except OSError as exc:
            raise CnnkitError(
                f"cannot read {path} ({exc.strerror or exc}); check the file and its permissions"
            ) from None
        if magic != b"\x93NUMPY":  # else np.load takes it for a pickle and suggests unpickling it
            raise CnnkitError(
                f"cannot read {path} as a .npy array (no NumPy header: it starts with {magic!r}); save clips "
                "with numpy.save(path, array)"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CnnkitError(
                f"cannot read {path} as a .npy array ({short_error(exc)}); save clips with numpy.save(path, array)"
            ) from None
        if not isinstance(arr, np.ndarray):
            raise CnnkitError(f"{path} is not a single .npy array; save each clip with numpy.save")
        if arr.dtype != np.uint8 and arr.dtype.kind != "f":
            raise CnnkitError(f"{path} holds {arr.dtype} values; clips are uint8 (0-255) or float in [0, 1]")
        if arr.ndim == 3:
            arr = arr[:, None]  # (T, H, W) -> (T, 1, H, W)
        if arr.ndim != 4 or arr.shape[1] != self.channels or min(arr.shape) < 1:
            raise CnnkitError(
                f"{path} has shape {arr.shape}; a clip is (T, H, W) or (T, C, H, W) with "
                f"C = {self.channels} channels and no empty axis"
            )
        if self.num_frames is not None:
            arr = arr[: self.num_frames]  # read only what is used
        # the map costs nothing; its float32 copy is the clip's whole size, refused before it is made
        check_fits(
            arr.size * 4, f"{path} ({'x'.join(map(str, arr.shape))} {arr.dtype} values, read as float32)", CLIP_FIX
        )
        x = torch.from_numpy(np.array(arr, dtype=np.float32))  # copies off the map
        if arr.dtype == np.uint8:
            return x.div_(255)
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise CnnkitError(
                f"{path} holds float values outside [0, 1] (min {x.min().item():.3g}, max "
                f"{x.max().item():.3g}); scale clips to [0, 1] or save them as uint8"
            )
        return x
