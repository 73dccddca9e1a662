"""Networks built on the meta device for their shapes alone (cnnkit.models.meta)."""

import subprocess
import sys

import torch

from cnnkit.models import create_model
from cnnkit.models.meta import on_meta


def test_a_meta_build_has_the_real_networks_shapes_and_flags_without_computing_its_weights():
    with on_meta():
        probe = create_model("efficientnet_lite0", num_classes=5)
        t = torch.empty(3, 4)
        t.normal_().unsqueeze_(0)  # shape-changing in-place operations still run
        t.requires_grad_(True)
    real = create_model("efficientnet_lite0", num_classes=5)
    assert {k: v.shape for k, v in probe.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    assert all(p.device.type == "meta" for p in probe.parameters())
    assert t.device.type == "meta" and t.shape == (1, 3, 4) and t.requires_grad
    x = torch.zeros(2, 3)
    with on_meta():
        x.fill_(1.0)  # a real tensor inside: its values change as usual
    assert x.sum().item() == 6.0


def test_building_on_meta_does_not_import_pytorchs_reference_implementations():
    """PyTorch's first value operation on a meta tensor imports torch._dynamo and sympy (1.3 s on
    two Zen 3 cores); a shapes-only build needs none of it."""
    code = (
        "import sys; from cnnkit.models import create_model; from cnnkit.models.meta import on_meta\n"
        "with on_meta(): create_model('efficientnet_lite0', num_classes=5)\n"
        "print('sympy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
