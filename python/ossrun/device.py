"""Which compute device a model runs on: what CUDA can do here (`cuda_status()`) and how
`device="cpu"|"cuda"|"auto"` is resolved. An explicit "cuda" that cannot be honoured is a
`DeviceError` saying why, never a silent fall-back to the CPU; "auto" takes the CPU and says why.

With the CUDA target built, the core has a device model (cuda/device_model.h) and "cuda" / "auto"
resolve to the GPU where one is usable; ossrun.device_load then plans the placement and may still
refuse (or, for "auto", stay on the CPU) with the reason. The CUDA forward pass is new and has not
yet run on a GPU in this project's checks (README "CUDA").
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")


def _has_device_model() -> bool:
    try:
        from . import _core
    except ImportError:  # a source checkout without its build: say so elsewhere
        return False
    return bool(getattr(_core, "HAS_DEVICE_MODEL", False))


# Whether Model's forward pass can run on CUDA in this build (the core has the device model).
CUDA_FORWARD = _has_device_model()

_NOT_BUILT = ("ossrun was built without CUDA (no nvcc of CUDA >= 12.8 was found at build time, or "
              "OSSRUN_CUDA=OFF); rebuild with nvcc on PATH, e.g. "
              "`pip install . -Ccmake.define.OSSRUN_CUDA=ON`")
# cudaError_t values status() reports (cuda_runtime_api.h).
_INSUFFICIENT_DRIVER, _NO_DEVICE = 35, 100


@dataclass(frozen=True)
class CudaStatus:
    """What CUDA can do in this process. `available` is True when a device can run this build's
    kernels; otherwise `reason` says why not (not built, no driver, no device, ...)."""

    available: bool
    reason: str
    built: bool
    device: str | None = None
    compute_capability: tuple[int, int] | None = None
    free_bytes: int = 0
    total_bytes: int = 0
    architectures: str = ""
    runtime_version: int = 0
    driver_version: int = 0

    def __str__(self) -> str:
        if not self.available:
            return f"CUDA unavailable: {self.reason}"
        major, minor = self.compute_capability
        return (f"CUDA device {self.device} (sm_{major}{minor}), {self.free_bytes / 2**30:.1f} GiB "
                f"free of {self.total_bytes / 2**30:.1f} GiB")


def _version_text(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def status_from_report(report: dict | None) -> CudaStatus:
    """A CudaStatus from ossrun._cuda.status()'s dict (None: the module is not built)."""
    if report is None:
        return CudaStatus(False, _NOT_BUILT, built=False)
    common = dict(built=True, architectures=report["architectures"],
                  runtime_version=report["runtime_version"], driver_version=report["driver_version"])
    runtime = _version_text(report["runtime_version"])
    code = report["error_code"]
    if code == _INSUFFICIENT_DRIVER and report["driver_version"] == 0:
        return CudaStatus(False, "no NVIDIA driver was found (libcuda.so.1 could not be loaded)",
                          **common)
    if code == _INSUFFICIENT_DRIVER:
        return CudaStatus(False, f"the NVIDIA driver supports CUDA "
                          f"{_version_text(report['driver_version'])}, older than this build's "
                          f"CUDA {runtime}: update the driver", **common)
    if code == _NO_DEVICE or (code == 0 and not report["devices"]):
        return CudaStatus(False, "the NVIDIA driver sees no CUDA device (check CUDA_VISIBLE_DEVICES)",
                          **common)
    if code != 0:
        return CudaStatus(False, f"CUDA failed to start: {report['error']}", **common)
    dev = report["devices"][0]
    cc = tuple(dev["compute_capability"])
    details = dict(device=dev["name"], compute_capability=cc, free_bytes=dev["free_bytes"],
                   total_bytes=dev["total_bytes"], **common)
    if not dev["has_kernel_image"]:
        return CudaStatus(False, f"{dev['name']} is sm_{cc[0]}{cc[1]}, and this build holds code for "
                          f"{report['architectures']} only: rebuild with "
                          f"-Ccmake.define.CMAKE_CUDA_ARCHITECTURES={cc[0]}{cc[1]}", **details)
    return CudaStatus(True, "", **details)


def cuda_status() -> CudaStatus:
    """What CUDA can do here: a device's name and free/total memory, or why CUDA is unavailable.
    Needs neither a GPU nor a driver to answer."""
    try:
        from . import _cuda
    except ImportError:
        return status_from_report(None)
    return status_from_report(_cuda.status())


def resolve_device(device: str, status: CudaStatus | None = None) -> tuple[str, str]:
    """The device `device` ("auto", "cpu" or "cuda") means here, and why: ("cpu" | "cuda", reason).

    Raises ValueError for an unknown name and DeviceError when "cuda" cannot be honoured.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu", "requested"
    status = cuda_status() if status is None else status
    if device == "cuda":
        if not status.available:
            raise DeviceError(f"device='cuda' cannot be used: {status.reason}")
        if not CUDA_FORWARD:
            raise DeviceError(f"device='cuda' cannot be used: {status.device} is here and the CUDA "
                              "kernels are built, but this build's core has no CUDA device model "
                              "(the forward pass does not run on CUDA); use device='cpu' or 'auto'")
        return "cuda", str(status)
    if not status.available:
        return "cpu", str(status)
    if not CUDA_FORWARD:
        return "cpu", f"{status.device} unused: this build's forward pass does not run on CUDA"
    return "cuda", str(status)
