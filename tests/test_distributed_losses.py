"""Under torchrun each process's loss on its share of a global batch, DDP-averaged, must give one
process's gradient on the whole batch, for every task's loss: a mean over samples (classify) and
the losses normalised otherwise (detect's positives, segment's valid pixels, instance's RoI pixels),
for a batch that splits evenly over two processes and one that does not. The reference is one
process's gradient of the loss on the whole batch."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_distributed import _runs_in_one_pair

from cnnkit.engine.distributed import Dist, pool, shard_batch
from cnnkit.engine.loop import step_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _scenes(counts: list[int]):
    """64 x 64 images with ``counts[i]`` rectangles each (labels a, b alternating), as an InstanceSet."""
    from cnnkit.tasks.instance.data import from_instances

    g = torch.Generator().manual_seed(0)
    imgs, insts = [], []
    for count in counts:
        img = (torch.rand(3, 64, 64, generator=g) * 60).to(torch.uint8)
        inst = torch.zeros(64, 64, dtype=torch.uint8)
        for k in range(count):
            y0, x0, h, w = (int(v) for v in torch.randint(0, 30, (4,), generator=g))
            inst[y0 : y0 + h + 12, x0 : x0 + w + 12] = k + 1
        img[:, inst > 0] = 200
        imgs.append(img)
        insts.append(inst)
    labels = [torch.arange(int(i.max())) % 2 for i in insts]
    return from_instances(imgs, insts, labels, ["a", "b"], 64)


def _case(name: str, n: int):
    """(task, model in eval mode, global batch of ``n``): batch norm on its running statistics, so
    that only the loss differs between one process and two."""
    torch.manual_seed(0)
    counts = [2, 0, 1, 3, 1][:n] if n <= 5 else [2, 0, 1, 3, 1] * 2
    if name in ("detect", "varifocal"):
        from cnnkit.tasks.detect.load import new_detector
        from cnnkit.tasks.detect.task import DetectTask

        data = _scenes(counts)
        task = DetectTask(["a", "b"], n, cls_loss="varifocal" if name == "varifocal" else "focal", box_weight=2.0)
        model = new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)[0]
        batch = (data.images.float() / 255, data.boxes, data.labels)
    elif name == "instance":
        from cnnkit.tasks.instance.config import InstanceConfig
        from cnnkit.tasks.instance.load import new_mask_detector
        from cnnkit.tasks.instance.task import InstanceTask

        data = _scenes(counts)
        task = InstanceTask(["a", "b"], n, flip=0, scale=None, colour=0, roi_jitter=1, mask_weight=3.0)
        cfg = InstanceConfig(
            model="mobilenet_v3_small", weights=None, image_size=64, width=16, mask_width=8, mask_convs=2
        )
        model = new_mask_detector(cfg, ["a", "b"], 3)[0]
        batch = task._batch(data, torch.arange(n), torch.Generator().manual_seed(0), True)
    elif name == "segment":
        from cnnkit.tasks.segment.task import SegmentTask

        task = SegmentTask(batch_size=n, dice=0.5)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        x, y = torch.rand(n, 3, 12, 12), torch.randint(0, 3, (n, 12, 12))
        for i in range(n):  # ignored pixels, more in some images than in others
            y[i, : 2 * i + 1] = 255
        y[0, :11] = 255
        y[1][y[1] == 2] = 1  # a class absent from one image
        batch = (x, y)
    else:  # classify: a mean over samples
        from cnnkit.tasks.classify.task import ClassifyTask

        task = ClassifyTask(batch_size=n, label_smoothing=0.1)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        batch = (torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,)))
    return task, model.eval(), batch


def _grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=False)
    loss.backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in model.parameters()])


def _reference(name: str, task, model, batch) -> torch.Tensor:
    """One process's loss on the whole batch, by PyTorch's own functions where the task's is one."""
    if name == "segment":
        from cnnkit.tasks.segment.task import dice_loss

        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y, ignore_index=255) + 0.5 * dice_loss(logits, y, y != 255)
    if name == "classify":
        return F.cross_entropy(model(batch[0]), batch[1], label_smoothing=0.1)
    return step_loss(task, model, batch, Dist())[0]


@pytest.mark.parametrize("name", ["segment", "detect", "varifocal", "instance", "classify"])
@pytest.mark.parametrize("n", [4, 5])
def test_two_shares_of_a_batch_take_one_process_gradient_on_the_whole_batch(name, n):
    """Two processes simulated in one: each pools its share's sums with the other's (what the
    all-reduce adds), and DDP's average of their gradients is the whole batch's gradient."""
    task, model, batch = _case(name, n)
    whole = _grad(model, _reference(name, task, model, batch))
    ranks = [Dist(r, 2) for r in range(2)]
    pooled = [task.loss(model, shard_batch(batch, d))[0] for d in ranks]
    if name == "classify":  # a mean over samples: the engine's own weighting
        shares = [_grad(model, step_loss(task, model, batch, d)[0]) for d in ranks]
    else:
        total = sum(torch.cat([v.detach().float().reshape(-1) for v in p.sums.values()]) for p in pooled)
        shares = [_grad(model, pool(p, d, total)["loss"] * 2) for p, d in zip(pooled, ranks)]
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole, atol=1e-6, rtol=1e-5)
    if name == "detect" and n == 4:
        assert float(pooled[0].sums["positives"]) > 0 < float(pooled[1].sums["positives"])


def test_a_share_without_an_object_still_takes_its_part_of_the_gradient():
    """Images 0 and 1 hold no object: process 0's share has no positive location, whose count the
    loss divides by; only the whole batch's count may be clamped to 1."""
    from cnnkit.tasks.detect.load import new_detector
    from cnnkit.tasks.detect.task import DetectTask

    torch.manual_seed(0)
    data = _scenes([0, 0, 2, 1])
    task, model = DetectTask(["a", "b"], 4), new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)[0].eval()
    batch = (data.images.float() / 255, data.boxes, data.labels)
    whole = _grad(model, step_loss(task, model, batch, Dist())[0])
    ranks = [Dist(r, 2) for r in range(2)]
    pooled = [task.loss(model, shard_batch(batch, d))[0] for d in ranks]
    assert float(pooled[0].sums["positives"]) == 0
    total = sum(torch.cat([v.detach().float().reshape(-1) for v in p.sums.values()]) for p in pooled)
    shares = [_grad(model, pool(p, d, total)["loss"] * 2) for p, d in zip(pooled, ranks)]
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole, atol=1e-6, rtol=1e-5)


def test_pooled_parts_are_logged_per_image_as_one_process_logs_them():
    task, model, batch = _case("segment", 5)
    loss, stats = step_loss(task, model, batch, Dist())
    assert set(stats) == {"loss", "pixel_acc", "n"} and float(stats["n"]) == 5
    assert float(stats["loss"]) == pytest.approx(5 * float(loss.detach()))
    x, y = batch
    valid = y != 255
    acc = float(((model(x).argmax(1) == y) & valid).sum() / valid.sum())
    assert float(stats["pixel_acc"]) == pytest.approx(5 * acc)


CASES = [("segment", 5), ("instance", 5), ("detect", 4), ("classify", 5)]


def _ddp_grads(rank: int, out: str) -> None:
    """Each case's gradient through the engine's step under DDP (gloo), as rank ``rank`` of two."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=2)
    grads = {}
    try:
        for name, n in CASES:
            task, model, batch = _case(name, n)
            net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            grads[name] = _grad(model, step_loss(task, net, batch, Dist(rank, 2))[0])
    finally:
        dist.destroy_process_group()
    torch.save(grads, f"{out}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """:func:`_ddp_grads` and :func:`_fit_detect_with_a_share_without_objects` in one pair of processes,
    run once for the tests that read them."""
    runs = [("grads", _ddp_grads, ()), ("detect", _fit_detect_with_a_share_without_objects, ())]
    return _runs_in_one_pair(tmp_path_factory.mktemp("ddp"), runs)


@pytest.mark.slow
def test_two_processes_under_ddp_take_one_process_gradient_for_every_task(ddp_runs):
    two = [torch.load(ddp_runs / "grads" / f"rank{r}.pt") for r in range(2)]
    for name, n in CASES:
        task, model, batch = _case(name, n)
        whole = _grad(model, _reference(name, task, model, batch))
        for rank in range(2):
            torch.testing.assert_close(two[rank][name], whole, atol=1e-6, rtol=1e-5, msg=f"{name} rank {rank}")


def test_every_head_of_the_detector_takes_a_gradient_on_a_batch_without_objects():
    """DDP's static graph needs the same parameters used in every step: a share without an object
    (no positive location) keeps the box and centre-ness heads in the graph, times 0."""
    from cnnkit.tasks.detect.load import new_detector
    from cnnkit.tasks.detect.task import DetectTask

    torch.manual_seed(0)
    data = _scenes([0, 0])
    task, model = DetectTask(["a", "b"], 2), new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)[0]
    loss = step_loss(task, model, (data.images.float() / 255, data.boxes, data.labels), Dist())[0]
    loss.backward()
    head = model.head
    for conv in (head.cls, head.box, head.ctr):
        assert conv.weight.grad is not None and conv.bias.grad is not None


def _fit_detect_with_a_share_without_objects(rank: int, out: str) -> None:
    """The engine's fit under DDP: steps where rank 1's share has objects and steps where it has none."""
    from cnnkit.engine import Data, Phase, Plan, Setup, fit
    from cnnkit.tasks.detect.load import new_detector
    from cnnkit.tasks.detect.task import DetectTask

    data = _scenes([1, 2, 1, 1, 1, 1, 0, 0])

    class Fixed(DetectTask):
        def batches(self, d, generator, train=True):
            whole = (d.images.float() / 255, d.boxes, d.labels)
            return [tuple(t[i : i + 4] for t in whole) for i in (0, 4, 0)]

        def evaluate(self, model, d):
            return {"metric": 0.0}

    torch.manual_seed(0)
    model = new_detector("mobilenet_v3_small", ["a", "b"], 3, 64, width=16)[0]
    plan = Plan([Phase(1, lambda m: Setup(torch.optim.SGD(m.parameters(), lr=0.01)))])
    fit(
        Fixed(["a", "b"], 4, flip=0, scale=None, colour=0),
        model,
        Data(data, data),
        plan,
        None,
        quiet=True,
        device="cpu",
    )
    torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, f"{out}/rank{rank}.pt")


@pytest.mark.slow
def test_detect_under_ddp_trains_through_shares_with_and_without_objects(ddp_runs):
    two = [torch.load(ddp_runs / "detect" / f"rank{r}.pt") for r in range(2)]
    for k in two[0]:
        torch.testing.assert_close(two[0][k], two[1][k], atol=0, rtol=0)
