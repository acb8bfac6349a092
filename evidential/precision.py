"""
# Numeric precision of the forward pass and the loss

`fp32` computes everything in float32. `bf16` runs the forward pass and the loss under
`torch.autocast(dtype=torch.bfloat16)`: matrix products and convolutions take bfloat16 inputs (8 bits of
mantissa, float32's exponent range, so no loss scaling is needed), while the parameters, their gradients and
the optimizer state stay float32, and the operations autocast keeps in float32 (softmax, log, sums, ...) stay
there.

bf16 only pays where the processor multiplies bfloat16 natively: on x86, AVX512-BF16 or AMX-BF16; elsewhere
oneDNN emulates it, slower than float32. `bf16_unsupported` says why a device cannot use it, so a run refuses
`precision=bf16` at once instead of training slower than it would in float32.
"""
import contextlib
import platform
from pathlib import Path
from typing import ContextManager, Optional

import torch

#: The choices of `precision`
PRECISIONS = ('fp32', 'bf16')

# x86 CPU flags (as Linux's /proc/cpuinfo names them) that multiply bfloat16 in hardware
_NATIVE_BF16_FLAGS = ('avx512_bf16', 'amx_bf16')


class PrecisionError(ValueError):
    """A precision this device cannot run: `precision={name}: {reason}`."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"precision={name}: {reason}")
        self.reason = reason


def _cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('flags'):
            return set(line.split(':', 1)[1].split())
    return None


def bf16_unsupported(device: torch.device) -> Optional[str]:
    """Why `device` has no native bfloat16 arithmetic, or None when it has.

    CUDA: `torch.cuda.is_bf16_supported()` (Ampere and newer). CPU: x86 with AVX512-BF16 or AMX-BF16 (read
    from /proc/cpuinfo). Other CPUs are refused: torch offers no public check of their bfloat16 units.
    """
    if device.type == 'cuda':
        return None if torch.cuda.is_bf16_supported() else 'this CUDA device has no native bfloat16 support'
    machine = platform.machine().lower()
    if machine in ('x86_64', 'amd64', 'i386', 'i686'):
        flags = _cpu_flags()
        if flags is None:
            return 'cannot read the CPU flags (/proc/cpuinfo) to check for AVX512-BF16 or AMX-BF16'
        if flags.isdisjoint(_NATIVE_BF16_FLAGS):
            return ('this CPU has neither AVX512-BF16 nor AMX-BF16, so bfloat16 would be emulated and run slower '
                    'than float32; use precision=fp32')
        return None
    return f'native bfloat16 is checked on x86 CPUs and CUDA only, not on {machine or "this"} CPU; use precision=fp32'


def check_precision(precision: str, device: torch.device) -> None:
    """Raises `PrecisionError` when `device` cannot run `precision`."""
    if precision not in PRECISIONS:
        raise PrecisionError(precision, f"use one of {', '.join(PRECISIONS)}")
    if precision == 'bf16':
        reason = bf16_unsupported(device)
        if reason is not None:
            raise PrecisionError(precision, reason)


def autocast(precision: str, device: torch.device) -> ContextManager:
    """The context to run forward passes and losses in: nothing for `fp32`, bfloat16 autocast for `bf16`."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    if precision == 'bf16':
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise PrecisionError(precision, f"use one of {', '.join(PRECISIONS)}")
