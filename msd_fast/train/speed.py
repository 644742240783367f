"""Device and precision policy: which device, autocast dtype, memory format and compilation a run uses
when the config says `auto`."""
from dataclasses import asdict, dataclass
from typing import Any, Dict

import torch

from ..models import channels_last_on_cpu, compile_on_cuda
from .config import ConfigError
from .config_keys import TrainConfig


def cpu_has_native_bf16() -> bool:
    """True when this CPU does bf16 matrix maths in hardware (AVX512-BF16 or AMX): there oneDNN's bf16
    convolutions run about twice as fast as fp32 (measured: bench/bench_train.py). Without it bf16 is
    emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - private helpers of torch.cpu; absent -> assume no
        return False


def _check_loss_backend(backend: str, device_type: str) -> None:
    """A named fused kernel must run on this run's device and be built here (msd_fast.loss.backends.KERNELS
    says both); refused before anything is created on disk."""
    from ..loss.backends import KERNELS

    spec = KERNELS.get(backend)
    if spec is None:
        return
    why = spec.unavailable() or (f"it runs on {spec.device} tensors and this run is on {device_type}"
                                 if spec.device != device_type else "")
    if why:
        raise ConfigError(f"--loss-backend {backend}: {why}; use --loss-backend auto")


@dataclass(frozen=True)
class Speed:
    """How a run computes: device, autocast dtype ("none", "bf16", "fp16"), memory format, torch.compile, and
    the whole-step CUDA graph (decided by the Trainer, which knows where the data live)."""
    device: str
    amp: str
    channels_last: bool
    compile: bool
    cuda_graph: bool = False

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def resolve_speed(cfg: TrainConfig) -> Speed:
    """Per-device defaults: CUDA -> bf16, channels-last, compile (not MSDNet: models.compile_on_cuda), the
    step as one CUDA graph (decided by the Trainer, which knows where the data live); CPU -> bf16 where the CPU has native bf16
    (else fp32), channels-last except for MSDNet (models.channels_last_on_cpu), eager (torch.compile is
    slow to compile on CPU and measured no faster for the ResNets)."""
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    on_cuda = dev.startswith("cuda")
    _check_loss_backend(cfg.loss_backend, "cuda" if on_cuda else "cpu")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if on_cuda or cpu_has_native_bf16() else "none")
    cl = cfg.channels_last if cfg.channels_last != "auto" else (on_cuda or channels_last_on_cpu(cfg.model))
    comp = cfg.compile if cfg.compile != "auto" else (on_cuda and compile_on_cuda(cfg.model))
    return Speed(device=dev, amp=amp, channels_last=bool(cl), compile=bool(comp))


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
