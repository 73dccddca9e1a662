"""Numeric precision of training and inference: ``auto`` | ``fp32`` | ``bf16`` (autocast).

``auto`` picks bf16 autocast only where the processor multiplies bfloat16 natively -- a CUDA GPU
that supports it, or a CPU with AVX-512-BF16 / AMX-BF16 (x86) or the BF16 extension (Arm), read
from ``/proc/cpuinfo`` at run time -- and fp32 everywhere else: emulated bf16 is slower than fp32.
Weights, optimizer state and checkpoints stay fp32 whatever is chosen; autocast only runs the
matrix products (convolutions, linear layers) in bf16.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from cnnkit.errors import CnnkitError

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags; "bf16" in Arm's Features line


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_name(cpuinfo: str | None = None) -> str:
    """The processor, for benchmark reports: its model name, and on x86 its family and model numbers
    and the vector units that decide its speed, e.g. ``"AMD EPYC (family 25 model 17; AVX-512,
    AVX512-BF16, no AMX)"``. Virtual machines often report only "AMD EPYC", which the family and model
    tell apart (family 25 model 1 and model 17 are AMD's Zen 3 and Zen 4, family 26 is Zen 5). Where
    ``ONEDNN_MAX_CPU_ISA`` caps oneDNN's kernels, the report says so.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (default: read it).
    """
    import os
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep and not line.strip():
            if fields:
                break  # the first processor's block is enough
            continue
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = set(fields.get("flags", "").split())
    if flags:
        units = ["AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"]
        if "avx512_bf16" in flags:
            units.append("AVX512-BF16")
        units.append("AMX" if "amx_bf16" in flags else "no AMX")
        details.append(", ".join(units))
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if cap:
        details.append(f"oneDNN capped at {cap}")
    return f"{name} ({'; '.join(details)})" if details else name


def native_bf16(device: torch.device) -> bool:
    """Does ``device`` do bfloat16 arithmetic in hardware?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & _CPU_BF16_FLAGS)


def choose(asked: str, device: torch.device, native: bool | None = None) -> tuple[str, str]:
    """(``"fp32"`` | ``"bf16"``, why) for the precision ``asked``; ``native`` overrides detection."""
    if asked not in PRECISIONS:
        raise CnnkitError(f"--precision must be one of {', '.join(PRECISIONS)}; received {asked!r}")
    native = native_bf16(device) if native is None else native
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if asked == "fp32":
        return "fp32", "asked for"
    if asked == "bf16":
        return (
            "bf16",
            "asked for" if native else f"on {where}, which has no native bf16 arithmetic: it will be slow (emulated)",
        )
    if native:
        return "bf16", f"auto: {where} has native bf16 arithmetic"
    return "fp32", f"auto: {where} has no native bf16 arithmetic"


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "auto":
        precision = choose("auto", device)[0]
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
