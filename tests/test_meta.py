"""Networks built on the meta device for their shapes alone (cnnkit.models.meta)."""

import subprocess
import sys

import torch

from cnnkit.models import create_model
from cnnkit.models.meta import on_meta


def _sympy_imported_after(build: str) -> bool:
    """Whether sympy (which PyTorch's meta operations import) is loaded after ``build`` ran inside
    :func:`on_meta`, in a fresh interpreter."""
    code = f"import sys\nfrom cnnkit.models.meta import on_meta\nwith on_meta():\n    {build}\nprint('sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"True": True, "False": False}[out.stdout.strip()]


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
    built = "from cnnkit.models import create_model; create_model('efficientnet_lite0', num_classes=5)"
    assert _sympy_imported_after(built) is False


def test_a_feature_pyramid_built_on_meta_finds_its_strides_through_a_real_copy_that_draws_nothing():
    """The segmenter, detector and instance model build on the meta device when they load; their
    pyramid's strides and channels come from a real copy (no meta operation, so no imports), and
    the random numbers that copy draws are given back."""
    from cnnkit.models.features import create_features

    real = create_features("efficientnet_lite0", out_strides=(4, 8, 16, 32), in_channels=3)
    state = torch.get_rng_state()
    with on_meta():
        probe = create_features("efficientnet_lite0", out_strides=(4, 8, 16, 32), in_channels=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert (probe.strides, probe.channels) == (real.strides, real.channels) == ([4, 8, 16, 32], [24, 40, 112, 320])
    built = "from cnnkit.models.features import create_features; create_features('efficientnet_lite1')"
    assert _sympy_imported_after(built) is False
