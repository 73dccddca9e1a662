"""cnnkit.ops against brute-force Python references (torchvision's kernels written out as loops),
hand computations, and torch.autograd.gradcheck."""

import math

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.ops import (
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    box_iou_elementwise,
    generalized_box_iou,
    generalized_box_iou_elementwise,
    nms,
    roi_align,
    roi_pool,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def random_boxes(n, size=20.0, g=None):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2 + 0.5
    return torch.cat([xy, xy + wh], 1)


# ---------------------------------------------------------------- conversions, IoU, GIoU
def test_box_convert_round_trips_and_hand_values():
    b = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert box_convert(b, "xyxy", "xywh").tolist() == [[1.0, 2.0, 4.0, 8.0]]
    assert box_convert(b, "xyxy", "cxcywh").tolist() == [[3.0, 6.0, 4.0, 8.0]]
    boxes = random_boxes(50)
    for fmt in ("xywh", "cxcywh"):
        back = box_convert(box_convert(boxes, "xyxy", fmt), fmt, "xyxy")
        torch.testing.assert_close(back, boxes)
    torch.testing.assert_close(
        box_convert(box_convert(boxes, "xyxy", "xywh"), "xywh", "cxcywh"), box_convert(boxes, "xyxy", "cxcywh")
    )
    with pytest.raises(CnnkitError, match="unknown box format 'yxyx'"):
        box_convert(b, "yxyx", "xyxy")


def _iou_ref(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


def test_iou_and_giou_match_the_brute_force_reference():
    a, b = random_boxes(7), random_boxes(5)
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == (7, 5) and giou.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            ref_iou, ref_giou = _iou_ref(a[i].tolist(), b[j].tolist())
            assert iou[i, j].item() == pytest.approx(ref_iou, abs=1e-12)
            assert giou[i, j].item() == pytest.approx(ref_giou, abs=1e-12)
    torch.testing.assert_close(box_iou_elementwise(a[:5], b), torch.diagonal(iou[:5]))
    torch.testing.assert_close(generalized_box_iou_elementwise(a[:5], b), torch.diagonal(giou[:5]))


def test_iou_hand_cases():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 6.0, 2.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0])
    # disjoint: hull 6 x 2 = 12, union 8 -> GIoU = 0 - 4 / 12
    assert generalized_box_iou(a, b)[0].tolist() == pytest.approx([1 / 7 - 2 / 9, 1.0, -1 / 3])
    assert box_area(torch.tensor([[0.0, 0.0, 3.0, 2.0], [2.0, 0.0, 1.0, 1.0]])).tolist() == [6.0, 0.0]


def test_giou_gradient():
    a, b = random_boxes(4).requires_grad_(), random_boxes(4)
    assert torch.autograd.gradcheck(lambda t: generalized_box_iou_elementwise(t, b), (a,))


# ---------------------------------------------------------------- NMS
def _nms_ref(boxes, scores, t):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(_iou_ref(boxes[i], boxes[j])[0] <= t for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("block", [128, 7])
def test_nms_matches_greedy_reference(t, block):
    g = torch.Generator().manual_seed(1)
    for _trial in range(5):
        boxes = random_boxes(60, size=15.0, g=g)
        scores = torch.rand(60, generator=g, dtype=torch.float64)
        ref = _nms_ref(boxes.tolist(), scores.tolist(), t)
        assert nms(boxes, scores, t, block=block).tolist() == ref
        assert nms(boxes, scores, t, max_keep=5, block=block).tolist() == ref[:5]
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5], dtype=torch.float64)  # ties: earlier index first
    assert nms(random_boxes(4, size=100.0, g=g), scores, 0.99).tolist() == [1, 0, 2, 3]


def test_nms_chain_and_empty():
    # a chain: box 1 suppresses 2; 2 would suppress 3 but is gone, so 3 stays (greedy, not "fast NMS")
    boxes = torch.tensor([[0.0, 0, 10, 10], [6, 0, 16, 10], [12, 0, 22, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.2).tolist() == [0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_batched_nms_only_suppresses_within_a_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    g = torch.Generator().manual_seed(2)
    boxes = random_boxes(80, g=g)
    scores = torch.rand(80, generator=g, dtype=torch.float64)
    cls = torch.randint(0, 3, (80,), generator=g)
    got = batched_nms(boxes, scores, cls, 0.4)
    ref = []
    for c in range(3):
        idx = torch.nonzero(cls == c).flatten()
        ref += [idx[i].item() for i in _nms_ref(boxes[idx].tolist(), scores[idx].tolist(), 0.4)]
    assert sorted(got.tolist()) == sorted(ref)
    assert scores[got].tolist() == sorted(scores[got].tolist(), reverse=True)


# ---------------------------------------------------------------- RoIAlign / RoIPool references
def _bilinear_ref(f, y, x):
    h, w = len(f), len(f[0])
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * f[yl][xl] + hy * lx * f[yl][xh] + ly * hx * f[yh][xl] + ly * lx * f[yh][xh]


def _roi_align_ref(x, rois, out, scale, ratio, aligned):
    """torchvision's roi_align CPU kernel, as plain loops."""
    res = torch.zeros(len(rois), x.shape[1], out[0], out[1], dtype=x.dtype)
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh, ew, eh = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out[0], rw / out[1]
        gh = ratio if ratio > 0 else math.ceil(rh / out[0])
        gw = ratio if ratio > 0 else math.ceil(rw / out[1])
        count = max(gh * gw, 1)
        for c in range(x.shape[1]):
            f = x[int(b), c].tolist()
            for ph in range(out[0]):
                for pw in range(out[1]):
                    acc = 0.0
                    for iy in range(gh):
                        yy = sh + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = sw + pw * bw + (ix + 0.5) * bw / gw
                            acc += _bilinear_ref(f, yy, xx)
                    res[k, c, ph, pw] = acc / count
    return res


def _roi_pool_ref(x, rois, out, scale):
    """torchvision's roi_pool CPU kernel, as plain loops (C round: halves away from zero)."""
    rnd = lambda v: math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)  # noqa: E731
    h, w = x.shape[2:]
    res = torch.zeros(len(rois), x.shape[1], out[0], out[1], dtype=x.dtype)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh, ew, eh = rnd(x1 * scale), rnd(y1 * scale), rnd(x2 * scale), rnd(y2 * scale)
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = rh / out[0], rw / out[1]
        for ph in range(out[0]):
            for pw in range(out[1]):
                hs = min(max(math.floor(ph * bh) + sh, 0), h)
                he = min(max(math.ceil((ph + 1) * bh) + sh, 0), h)
                ws = min(max(math.floor(pw * bw) + sw, 0), w)
                we = min(max(math.ceil((pw + 1) * bw) + sw, 0), w)
                for c in range(x.shape[1]):
                    if he <= hs or we <= ws:
                        continue
                    res[k, c, ph, pw] = x[int(b), c, hs:he, ws:we].max()
    return res


def _rois(g, n=6, batch=2, size=12.0):
    b = random_boxes(n, size=size, g=g)
    b[0] = torch.tensor([-3.0, -2.0, 4.0, 20.0], dtype=torch.float64)  # partly off the map
    b[1] = torch.tensor([2.0, 3.0, 2.3, 3.2], dtype=torch.float64)  # smaller than a cell
    idx = torch.randint(0, batch, (n, 1), generator=g).to(torch.float64)
    return torch.cat([idx, b], 1)


@pytest.mark.parametrize("ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_matches_torchvision_kernel(ratio, aligned, scale):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = _rois(g)
    got = roi_align(x, rois, (3, 2), scale, ratio, aligned)
    torch.testing.assert_close(got, _roi_align_ref(x, rois, (3, 2), scale, ratio, aligned))


def test_roi_align_hand_values_and_list_boxes():
    # a linear ramp f(y, x) = x: RoIAlign with aligned=True over [0, 4) samples pixel centres exactly
    x = torch.arange(4.0).repeat(4, 1)[None, None]  # (1, 1, 4, 4), f = x
    got = roi_align(x, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2, aligned=True, sampling_ratio=2)
    # bin 0 covers continuous x in [-0.5, 1.5): samples at 0.0 and 1.0 -> mean 0.5; bin 1: 2.0, 3.0
    assert got[0, 0].tolist() == [[0.5, 2.5], [0.5, 2.5]]
    # not aligned: the box [0, 4) reads x - 0 directly: samples at 0.5, 1.5 and 2.5, 3.5 (clamped to 3)
    got = roi_align(x, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]), 2, sampling_ratio=2)
    assert got[0, 0, 0].tolist() == [1.0, 2.75]
    assert roi_align(x, torch.zeros(0, 5), 2).shape == (0, 1, 2, 2)
    with pytest.raises(CnnkitError, match=r"\(K, 5\)"):
        roi_align(x, torch.zeros(3, 4), 2)


def test_roi_align_on_a_bf16_map_samples_at_fp32_positions():
    """Under bf16 autocast the map is bf16; the boxes and the sample positions must not be: near x =
    250 bf16 steps by 1 pixel, which moved every mask target of an instance run."""
    x = (torch.arange(320.0) % 32).repeat(4, 1)[None, None]  # f(y, x) = x - 224 on [224, 256)
    rois = torch.tensor([[0.0, 250.3, 0.4, 254.7, 3.6]])
    exact = roi_align(x, rois, (2, 4), 1.0, 2, aligned=True)
    half = roi_align(x.bfloat16(), rois, (2, 4), 1.0, 2, aligned=True)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), exact, atol=0.07, rtol=0)  # the values' own rounding only
    assert exact[0, 0, 0].tolist() == pytest.approx([26.35, 27.45, 28.55, 29.65], abs=1e-4)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_pool_matches_torchvision_kernel(scale):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = _rois(g)
    rois[2, 1:] = torch.tensor([30.0, 30.0, 40.0, 40.0], dtype=torch.float64)  # off the map: empty bins
    torch.testing.assert_close(roi_pool(x, rois, (3, 2), scale), _roi_pool_ref(x, rois, (3, 2), scale))


def test_roi_pool_hand_value():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # box (0, 0)-(3, 3) covers all 4 x 4 cells (end inclusive); 2 x 2 bins each take their corner max
    assert roi_pool(x, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])], 2)[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_gradcheck(aligned):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(g, n=3, batch=1, size=5.0)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, 2, 1.0, -1, aligned), (x,))


def test_roi_pool_gradcheck():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(g, n=3, batch=1, size=5.0)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 2), (x,))


def test_roi_align_taps_in_bin_order():
    # every bin's taps in (gy, gx, 2, 2) order, as broadcasting the row and column parts gives them:
    # the order sets the sum's rounding, so a different one would change trained weights
    from cnnkit.ops.roi import _tap_order

    g = torch.Generator().manual_seed(7)
    k, ph, pw, gy, gx = 3, 4, 5, 2, 3
    rows, cols = torch.randn(k, ph, gy, 2, generator=g), torch.randn(k, pw, gx, 2, generator=g)
    want = (rows[:, :, None, :, None, :, None] * cols[:, None, :, None, :, None, :]).reshape(k * ph * pw, -1)
    got = _tap_order(rows.reshape(k, -1, 1) * cols.reshape(k, 1, -1), ph, pw)
    assert got.shape == (k * ph * pw, gy * gx * 4)
    assert torch.equal(got, want)


@pytest.mark.parametrize("ratio", [2, -1])
def test_roi_align_input_gradient_exact_in_fp32_and_summed_in_fp32_for_bf16(ratio):
    g = torch.Generator().manual_seed(8)
    base = torch.randn(2, 8, 12, 14, generator=g)
    rois = _rois(g, n=400, batch=2, size=12.0).float()  # each cell read by many taps: long sums
    grad_out = torch.randn(400, 8, 3, 2, generator=g, dtype=torch.float64)

    def input_grad(x, dtype, ops_grad=True):
        x = x.detach().to(dtype, copy=True).requires_grad_()
        if ops_grad:
            roi_align(x, rois, (3, 2), 1.0, ratio, True).backward(grad_out.to(dtype))
        else:  # the taps' sums through embedding_bag's own backward: box weights that take a gradient
            leaf = rois.clone().requires_grad_()
            roi_align(x, leaf, (3, 2), 1.0, ratio, True).backward(grad_out.to(dtype))
        return x.grad.double()

    assert torch.equal(input_grad(base, torch.float32), input_grad(base, torch.float32, ops_grad=False))
    exact = input_grad(base.double(), torch.float64)
    bf16 = (input_grad(base, torch.bfloat16) - exact).abs().max()
    # the weights and the output gradient are rounded to bf16 too: a few roundings, not one per tap
    # (embedding_bag's own backward, summing in bf16, is off by 0.13 here: three times this bound)
    assert bf16 <= exact.abs().max() * 2**-7


@pytest.mark.parametrize("ratio", [2, -1])
def test_roi_align_boxes_off_the_map_give_zeros_and_a_zero_gradient(ratio):
    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    rois = torch.tensor([[0, 100.0, 100.0, 120.0, 130.0], [0, 200.0, 200.0, 210.0, 230.0]])
    out = roi_align(x, rois, 2, 1.0, ratio, True)
    out.sum().backward()
    assert out.shape == (2, 2, 2, 2) and not out.any()
    assert x.grad.shape == x.shape and not x.grad.any()
