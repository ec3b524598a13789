"""Dense peak FLOP/s of common NVIDIA GPUs, from the vendors' datasheets (no sparsity).

Used by ``gantui bench`` to put the achieved FLOP/s against what the device could do. A
device not listed (or the CPU) has no known peak, and the bench says so.
"""

from __future__ import annotations

# name fragment (matched against torch.cuda.get_device_name, first match wins):
# (fp32, tf32, bf16) in TFLOP/s
PEAKS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("H200", (67.0, 494.7, 989.4)),
    ("H100 PCIe", (51.2, 378.0, 756.0)),
    ("H100", (67.0, 494.7, 989.4)),   # SXM5
    ("GH200", (67.0, 494.7, 989.4)),
    ("B200", (80.0, 1100.0, 2250.0)),
    ("A100", (19.5, 156.0, 312.0)),
    ("L40S", (91.6, 183.0, 362.0)),
    ("L40", (90.5, 90.5, 181.0)),
    ("L4", (30.3, 60.0, 121.0)),
    ("A10", (31.2, 62.5, 125.0)),
    ("RTX 4090", (82.6, 82.6, 165.2)),
    ("RTX 3090", (35.6, 35.6, 71.0)),
    ("V100", (15.7, 0.0, 0.0)),
    ("T4", (8.1, 0.0, 0.0)),
)


def peak_flops(device_name: str, precision: str) -> float | None:
    """The dense peak in FLOP/s for ``precision`` (``fp32``, ``tf32`` or ``bf16``), or None."""
    column = {"fp32": 0, "tf32": 1, "bf16": 2}[precision]
    for fragment, values in PEAKS:
        if fragment in device_name:
            value = values[column]
            return value * 1e12 if value else None
    return None
