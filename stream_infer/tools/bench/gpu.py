"""CPU vs CUDA throughput and latency of the bundled ONNX models under ONNX Runtime.

Usage (numpy + onnxruntime or onnxruntime-gpu only; no Kafka, no ``onnx``)::

    python -m stream_infer.tools.bench.gpu [--models engines_rul,engines_cnn_large]
        [--batch-sizes 1,32,256,1024,4096] [--seconds 3] [--json out.json]

For every model x batch size it times three modes on the same float32 batch of real engine windows
(C-MAPSS FD001 test set, tiled to the batch size):

``cpu``
    ``CPUExecutionProvider``, ``intra_op_num_threads = os.cpu_count()``, plain ``session.run``.
``cuda``
    ``CUDAExecutionProvider``, plain ``session.run`` on the numpy batch: ONNX Runtime copies the
    input host->device and the output device->host inside every run (what the worker does today).
``cuda_iobinding``
    Same CUDA session through an ``IOBinding`` bound once to a preallocated device input and
    device output. Each timed batch copies the rows from a page-locked (pinned) host buffer into
    the device input, runs ``run_with_iobinding`` and copies the output back to a numpy array, so
    the figure includes both copies. How the pinned buffer was obtained is reported
    (``host_buffer``): an ONNX Runtime ``HOST_ACCESSIBLE`` OrtValue when this onnxruntime can
    allocate one, else ``cudaHostAlloc`` from the CUDA runtime that onnxruntime loaded, else (noted
    as such) ordinary pageable memory. A model whose input is read by a CPU-only node
    (``engines_rul``: ``ai.onnx.ml.Scaler``) binds the pinned buffer itself instead, because ONNX
    Runtime copies a device-bound input to the host once, at bind time (the row's note says so).

Contract:

* Each config is warmed up (at least 2 runs and a quarter of ``--seconds``) before timing; the timed
  loop runs for ``--seconds`` and at least 3 batches. Every run is synchronous (ONNX Runtime
  synchronises the CUDA stream at the end of ``run``; the copies are blocking), so each latency is
  a complete batch: input on the host -> output on the host.
* ``rows_per_s`` = rows processed / wall time of the timed loop; ``p50_ms``/``p99_ms`` are per-batch
  latency percentiles; ``speedup_vs_cpu`` divides by the ``cpu`` rows/s of the same model and batch.
* CUDA outputs are compared with the CPU output of the same batch (``max_abs_diff_vs_cpu``,
  ``max_rel_diff_vs_cpu`` = abs diff / max(1, max |cpu output|)); a difference above
  :data:`REL_TOLERANCE` is flagged (TF32 matmuls alone can reach ~1e-3).
* Without a working CUDA provider the ``cuda*`` rows are ``status = "skipped"`` with the reason and
  a hint (never a crash), so the script also runs on a CPU-only machine. A failure inside one
  config becomes a ``status = "error"`` row and the others still run.
* Before creating CUDA sessions, ``onnxruntime.preload_dlls()`` (ORT >= 1.21) is called when it
  exists, so CUDA/cuDNN come from the ``nvidia-*`` pip packages that PyTorch installs.

:func:`run_bench` is the importable entry point (the test uses it); :func:`main` is the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from stream_infer.models import MODELS_DIR

DEFAULT_MODELS: tuple[str, ...] = ("engines_rul", "engines_cnn_large")
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 32, 256, 1024, 4096)
DEFAULT_SECONDS = 3.0
MODES: tuple[str, ...] = ("cpu", "cuda", "cuda_iobinding")
CUDA_MODES = frozenset({"cuda", "cuda_iobinding"})
CUDA_PROVIDER = "CUDAExecutionProvider"
#: Warm-up: at least this many runs, and at least this fraction of --seconds (cuDNN picks its
#: convolution algorithm on the first run of each new shape, which can take 100s of ms).
MIN_WARMUP_RUNS = 2
WARMUP_FRACTION = 0.25
#: Percentiles need a few samples even when one batch takes longer than --seconds.
MIN_TIMED_BATCHES = 3
#: CUDA vs CPU agreement threshold on max |diff| / max(1, max |cpu output|).
REL_TOLERANCE = 5e-3
#: Libraries whose load path is worth reporting when CUDA misbehaves.
_CUDA_LIB_MARKERS = ("libcudart", "libcublas", "libcudnn", "libcufft", "libcurand", "libnvrtc", "libnvJitLink")


class Unavailable(RuntimeError):
    """A capability (CUDA provider, pinned memory strategy) is missing; the message says why."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One (model, batch, mode) measurement; ``status`` is ``ok``, ``skipped`` or ``error``."""

    model: str
    batch: int
    mode: str
    status: str
    rows_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    batches: int = 0
    seconds: float = 0.0
    speedup_vs_cpu: float | None = None
    max_abs_diff_vs_cpu: float | None = None
    max_rel_diff_vs_cpu: float | None = None
    outputs_agree: bool | None = None
    note: str = ""


@dataclass
class CudaStatus:
    """Whether the CUDA rows can run, and everything that explains why (not)."""

    available: bool
    reason: str = ""
    hint: str = ""
    preload: str = "not attempted"
    loaded_libraries: list[str] = field(default_factory=list)
    nvidia_library_dirs: list[str] = field(default_factory=list)
    provider_options: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Machine description and CUDA set-up
# --------------------------------------------------------------------------------------------


def gpu_name() -> str | None:
    """GPU name(s) from ``nvidia-smi --query-gpu=name --format=csv,noheader``; None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi failed: {err}"
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not names:
        return f"nvidia-smi exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
    return "; ".join(names)


def _cpu_model() -> str | None:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (written to the JSON report)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "onnxruntime": ort.__version__,
        "onnxruntime_package": getattr(ort, "package_name", None),
        "onnxruntime_cuda_version": getattr(ort, "cuda_version", None) or None,
        "onnxruntime_device": ort.get_device(),
        "available_providers": ort.get_available_providers(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def nvidia_library_dirs() -> list[str]:
    """``site-packages/nvidia/*/lib`` folders holding shared libraries (where the nvidia-* pip
    packages that PyTorch depends on put CUDA, cuBLAS, cuDNN...), in sys.path order."""
    found: list[str] = []
    for entry in sys.path:
        root = Path(entry or ".") / "nvidia"
        if not root.is_dir():
            continue
        for lib in sorted(root.glob("*/lib")):
            if any(lib.glob("*.so*")) and str(lib) not in found:
                found.append(str(lib))
    return found


def loaded_cuda_libraries() -> list[str]:
    """Paths of the CUDA/cuDNN libraries mapped into this process (Linux /proc/self/maps)."""
    paths: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace").splitlines():
            path = line.split()[-1] if line.split() else ""
            if path.startswith("/") and any(m in Path(path).name for m in _CUDA_LIB_MARKERS) and path not in paths:
                paths.append(path)
    return paths


def _ld_library_path_hint(dirs: Sequence[str]) -> str:
    """The shell line that puts the nvidia pip packages' libraries on the loader's path."""
    if not dirs:
        return (
            "no site-packages/nvidia/*/lib folder was found on sys.path: install PyTorch's CUDA "
            "build (or the nvidia-*-cu13 pip packages) in this environment, or put the CUDA and "
            "cuDNN libraries on LD_LIBRARY_PATH"
        )
    return "try: export LD_LIBRARY_PATH=" + ":".join(dirs) + "${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"


def preload_cuda_dlls() -> str:
    """Call ``onnxruntime.preload_dlls()`` when it exists; returns what happened, in words."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return (
            f"onnxruntime {ort.__version__} has no preload_dlls() (added in 1.21): the CUDA "
            "and cuDNN libraries must be found through LD_LIBRARY_PATH or the system paths"
        )
    try:
        preload()
    except Exception as err:  # it raises OSError/RuntimeError variants; none may stop the bench
        return f"onnxruntime.preload_dlls() raised {type(err).__name__}: {err}"
    return "onnxruntime.preload_dlls() returned without error"


def _cuda_provider(device_id: int) -> list[Any]:
    """The provider list for CUDA sessions: CUDA with default options, CPU for unsupported ops."""
    return [(CUDA_PROVIDER, {"device_id": str(device_id)}), "CPUExecutionProvider"]


def prepare_cuda(probe_model: Path, device_id: int = 0) -> CudaStatus:
    """Check that a CUDA session can really be created (not just listed), preloading DLLs first.

    ONNX Runtime lists ``CUDAExecutionProvider`` whenever the GPU package is installed, but when
    libcudart/cuBLAS/cuDNN cannot be loaded it logs an error and silently falls back to CPU; so the
    probe creates a session on ``probe_model`` and checks which provider it actually got.
    """
    dirs = nvidia_library_dirs()
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        return CudaStatus(
            available=False,
            reason=(
                f"onnxruntime {ort.__version__} ({getattr(ort, 'package_name', 'onnxruntime')}) has no "
                f"{CUDA_PROVIDER}; providers: {', '.join(available)}"
            ),
            hint=(
                "install the GPU build in place of the CPU one: pip uninstall -y onnxruntime && "
                "pip install onnxruntime-gpu (both provide the `onnxruntime` module; the CPU one can shadow it)"
            ),
            nvidia_library_dirs=dirs,
        )
    status = CudaStatus(available=False, preload=preload_cuda_dlls(), nvidia_library_dirs=dirs)
    try:
        session = ort.InferenceSession(str(probe_model), providers=_cuda_provider(device_id))
    except Exception as err:  # EP creation errors surface as several exception types
        status.reason = f"creating a CUDA session failed: {type(err).__name__}: {err}"
        status.hint = _ld_library_path_hint(dirs)
        status.loaded_libraries = loaded_cuda_libraries()
        return status
    status.loaded_libraries = loaded_cuda_libraries()
    if session.get_providers()[0] != CUDA_PROVIDER:
        status.reason = (
            f"the {CUDA_PROVIDER} failed to load (ONNX Runtime logged why above; usually "
            "libcudart/libcublas/libcudnn not found) and the session fell back to "
            f"{session.get_providers()}"
        )
        status.hint = _ld_library_path_hint(dirs)
        return status
    status.available = True
    status.provider_options = session.get_provider_options().get(CUDA_PROVIDER, {})
    return status


# --------------------------------------------------------------------------------------------
# Pinned host memory for the IOBinding mode
# --------------------------------------------------------------------------------------------


def _load_cudart() -> ctypes.CDLL:
    """The CUDA runtime library onnxruntime uses (already loaded: dlopen by soname returns it)."""
    major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    names = ([f"libcudart.so.{major}"] if major.isdigit() else []) + ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    candidates = names + [str(p) for d in nvidia_library_dirs() for p in sorted(Path(d).glob("libcudart.so*"))]
    errors = []
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError as err:
            errors.append(str(err))
    raise Unavailable("no loadable libcudart: " + "; ".join(errors[:3]))


def _float_view(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy float32 array over ``address`` (host-addressable memory we do not own)."""
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class HostStaging:
    """A [batch, width] float32 host buffer that the ``cuda_iobinding`` mode copies rows from.

    Contract: :attr:`array` is a writable numpy view of the buffer; :meth:`copy_to` copies all of
    it into a device OrtValue of the same shape and returns once the copy is complete;
    :attr:`strategy` and :attr:`detail` say how the memory was obtained. Strategies, in order:

    1. ``ort_host_accessible``: ONNX Runtime's own pinned allocator, an OrtValue allocated with the
       CUDA EP device's ``HOST_ACCESSIBLE`` memory info (ORT >= 1.23, when ``get_ep_devices()``
       lists the CUDA EP); copied with ``onnxruntime.copy_tensors``.
    2. ``cudaHostAlloc``: the Python API cannot allocate a pinned OrtValue here (``OrtDevice``'s
       Python wrapper only makes DEFAULT memory), so the buffer comes from ``cudaHostAlloc`` in
       the libcudart onnxruntime loaded, is wrapped zero-copy as a CPU OrtValue
       (``OrtValue.ortvalue_from_numpy``), and copied with ``OrtValue.update_inplace``, whose
       cudaMemcpy DMAs straight from pinned memory instead of staging through a bounce buffer.
    3. ``pageable``: plain numpy memory, same copy; slower, and the note says so.
    """

    def __init__(self, shape: tuple[int, int], device_id: int = 0) -> None:
        self.shape = shape
        self.device_id = device_id
        self._free: Callable[[], None] = lambda: None
        self._host_value: ort.OrtValue | None = None
        self._copy: Callable[[ort.OrtValue], None]
        attempts: list[str] = []
        for strategy in (self._ort_host_accessible, self._cuda_host_alloc):
            try:
                strategy()
                self.detail = "; ".join(attempts)
                return
            except Exception as err:  # each strategy may fail in its own way: try the next one
                attempts.append(f"{strategy.__name__.lstrip('_')} unavailable: {err}")
        self.strategy = "pageable"
        self.array = np.empty(shape, dtype=np.float32)
        self.ortvalue = ort.OrtValue.ortvalue_from_numpy(self.array)
        self._copy = lambda dst: dst.update_inplace(self.array)
        self.detail = "NOT pinned; " + "; ".join(attempts)

    def _ort_host_accessible(self) -> None:
        get_ep_devices = getattr(ort, "get_ep_devices", None)
        memory_type = getattr(ort, "OrtDeviceMemoryType", None)
        if get_ep_devices is None or memory_type is None or not hasattr(ort, "copy_tensors"):
            raise Unavailable(f"onnxruntime {ort.__version__} has no get_ep_devices/OrtDeviceMemoryType/copy_tensors")
        infos = [d.memory_info(memory_type.HOST_ACCESSIBLE) for d in get_ep_devices() if d.ep_name == CUDA_PROVIDER]
        infos = [i for i in infos if i is not None]
        if not infos:
            raise Unavailable("get_ep_devices() lists no CUDA EP device with HOST_ACCESSIBLE memory")
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(self.shape), np.float32, memory_info=infos[0])
        self.ortvalue = value
        # Pinned memory is ordinary host-addressable memory: numpy can view it in place.
        self.array = _float_view(value.data_ptr(), self.shape)
        self._copy = lambda dst: ort.copy_tensors([value], [dst], None)
        self.strategy = "ort_host_accessible"

    def _cuda_host_alloc(self) -> None:
        cudart = _load_cudart()
        cudart.cudaHostAlloc.restype = ctypes.c_int
        cudart.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        cudart.cudaFreeHost.restype = ctypes.c_int
        cudart.cudaFreeHost.argtypes = [ctypes.c_void_p]
        pointer = ctypes.c_void_p()
        nbytes = int(np.prod(self.shape)) * 4
        # cudaHostAllocPortable (1): pinned for every CUDA context, whichever one onnxruntime uses.
        code = cudart.cudaHostAlloc(ctypes.byref(pointer), nbytes, 1)
        if code != 0 or not pointer.value:
            raise Unavailable(f"cudaHostAlloc({nbytes}) returned CUDA error {code}")
        self.array = _float_view(pointer.value, self.shape)
        # Zero-copy: a CPU OrtValue over the pinned bytes (ORT keeps a reference to the array).
        self.ortvalue = ort.OrtValue.ortvalue_from_numpy(self.array)
        self._copy = lambda dst: dst.update_inplace(self.array)
        address = pointer.value
        self._free = lambda: cudart.cudaFreeHost(ctypes.c_void_p(address))
        self.strategy = "cudaHostAlloc"

    @property
    def host_value(self) -> ort.OrtValue:
        """A CPU OrtValue over the same (pinned) bytes, zero-copy: for binding the buffer itself."""
        if self._host_value is None:
            self._host_value = ort.OrtValue.ortvalue_from_numpy(self.array)
        return self._host_value

    def copy_to(self, dst: ort.OrtValue) -> None:
        """Copy the whole buffer into device OrtValue ``dst`` (same shape); blocking."""
        self._copy(dst)

    def close(self) -> None:
        """Release the buffer (after this, :attr:`array` must not be used)."""
        self.ortvalue = self._host_value = None
        self.array = None  # type: ignore[assignment]
        self._free()
        self._free = lambda: None


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def load_windows(rows: int) -> np.ndarray:
    """``rows`` real engine windows, float32 [rows, 420], C-contiguous.

    Taken from the bundled C-MAPSS FD001 test set (13,096 windows) and tiled when more are asked;
    seeded random sensor-like values if the datasets are not installed.
    """
    try:
        from stream_infer.tools.training import data  # numpy-only module (its contract)

        windows, _, _ = data.engine_windows(data.load_cmapss("test"))
    except (OSError, ValueError):
        windows = np.random.default_rng(42).normal(500.0, 200.0, size=(4096, 420)).astype(np.float32)
    reps = -(-rows // len(windows))
    return np.ascontiguousarray(np.tile(windows, (reps, 1))[:rows], dtype=np.float32)


def measure(step: Callable[[], np.ndarray], seconds: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Warm ``step`` up, then call it for ``seconds`` (and at least :data:`MIN_TIMED_BATCHES` times).

    Returns (per-call latencies in ms, wall seconds of the timed loop, the last call's output).
    """
    warm_until = time.perf_counter() + seconds * WARMUP_FRACTION
    runs = 0
    while runs < MIN_WARMUP_RUNS or time.perf_counter() < warm_until:
        step()
        runs += 1
    latencies: list[int] = []
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    while True:
        t0 = time.perf_counter_ns()
        out = step()
        t1 = time.perf_counter_ns()
        latencies.append(t1 - t0)
        if t1 >= deadline and len(latencies) >= MIN_TIMED_BATCHES:
            break
    return np.asarray(latencies, dtype=np.float64) / 1e6, (t1 - start) / 1e9, out


def _timed_result(
    model: str, batch: int, mode: str, step: Callable[[], np.ndarray], seconds: float, note: str = ""
) -> tuple[Result, np.ndarray]:
    """Measure ``step`` and fill a Result (no comparison yet); returns it with the last output."""
    lat, wall, out = measure(step, seconds)
    result = Result(
        model=model,
        batch=batch,
        mode=mode,
        status="ok",
        rows_per_s=len(lat) * batch / wall,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        mean_ms=float(lat.mean()),
        batches=len(lat),
        seconds=wall,
        note=note,
    )
    return result, np.asarray(out)


def _compare(result: Result, out: np.ndarray, reference: np.ndarray | None, cpu_rows_per_s: float | None) -> None:
    """Fill speedup and CPU-agreement fields of a CUDA result in place."""
    if cpu_rows_per_s:
        result.speedup_vs_cpu = result.rows_per_s / cpu_rows_per_s if result.rows_per_s else None
    if reference is None:
        return
    out = out.reshape(reference.shape)
    diff = float(np.max(np.abs(out.astype(np.float64) - reference))) if reference.size else 0.0
    scale = max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0
    result.max_abs_diff_vs_cpu = diff
    result.max_rel_diff_vs_cpu = diff / scale
    result.outputs_agree = bool(diff / scale <= REL_TOLERANCE)


def _plain_run(session: ort.InferenceSession, batch: np.ndarray) -> Callable[[], np.ndarray]:
    """One plain run of `session` on `batch` (its first input), returning its first output: the step timed."""
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda: session.run([output], {name: batch})[0]


def _cpu_session(path: Path) -> ort.InferenceSession:
    """CPU session using every core the OS reports (the brief: intra_op = os.cpu_count())."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


#: Same session, same batch: an IOBinding output further than this (relative) from session.run
#: means the binding did not see the new input (see :func:`_iobinding_step`).
_SELF_CHECK_TOLERANCE = 1e-4


def _close_enough(got: np.ndarray, expected: np.ndarray) -> bool:
    """True when ``got`` matches ``expected`` within :data:`_SELF_CHECK_TOLERANCE` (relative to max |expected|)."""
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    return bool(np.max(np.abs(got.reshape(expected.shape) - expected), initial=0.0) <= _SELF_CHECK_TOLERANCE * scale)


def _bind_time_content(
    session: ort.InferenceSession, batch: np.ndarray, expected: np.ndarray, others: np.ndarray
) -> np.ndarray | None:
    """Input contents whose output differs from ``expected`` (the output for ``batch``).

    They are what the device input holds at bind time, so that a binding which snapshots its input
    then (see :func:`_iobinding_step`) gives a visibly wrong output. Several candidates, because a
    model with clipped outputs (``engines_rul`` caps RUL at 125) can map zeros and ``batch`` to the
    same values. None when every candidate gives the same output: the check is then inconclusive.
    """
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    for candidate in (np.zeros_like(batch), others, batch[::-1], batch * 0.5 + 1.0):
        candidate = np.ascontiguousarray(candidate, dtype=np.float32)
        if not _close_enough(np.asarray(session.run([output_name], {input_name: candidate})[0]), expected):
            return candidate
    return None


def _iobinding_step(
    session: ort.InferenceSession, batch: np.ndarray, device_id: int, others: np.ndarray | None = None
) -> tuple[Callable[[], np.ndarray], HostStaging, str]:
    """Build the cuda_iobinding step: pinned host -> bound device input -> run -> device output -> host.

    Returns (step, staging buffer to close, note). The input is bound once. That is only valid when
    the nodes reading the input run on CUDA: when one runs on CPU (``engines_rul`` starts with
    ``ai.onnx.ml.Scaler``, which has no CUDA kernel), ONNX Runtime copies a device-bound input to
    the host *at bind time*, so later runs silently reuse the first contents. A self-check catches
    that (at bind time the device input holds contents with a different output, see
    :func:`_bind_time_content`; then the batch is copied in as in every timed step and the output
    compared with ``session.run`` on the batch); such models bind the pinned host buffer
    itself instead: the CPU node reads it in place and ONNX Runtime copies its result to the GPU.
    ``others`` (same shape as ``batch``, different rows) helps the self-check find bind-time
    contents with a different output.
    """
    input_name = session.get_inputs()[0].name
    output = session.get_outputs()[0]
    expected = np.asarray(session.run([output.name], {input_name: batch})[0])
    bind_time = _bind_time_content(session, batch, expected, batch[::-1] if others is None else others)
    io = session.io_binding()
    initial = np.zeros(batch.shape, np.float32) if bind_time is None else bind_time
    device_in = ort.OrtValue.ortvalue_from_numpy(initial, "cuda", device_id)
    io.bind_ortvalue_input(input_name, device_in)
    out_shape = [batch.shape[0], *output.shape[1:]]
    if all(isinstance(d, int) for d in out_shape):
        device_out = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", device_id)
        io.bind_ortvalue_output(output.name, device_out)
        fetch: Callable[[], np.ndarray] = device_out.numpy  # blocking device->host copy
    else:  # symbolic non-batch dims: let ORT allocate the output on the device each run
        io.bind_output(output.name, "cuda", device_id)
        fetch = lambda: io.copy_outputs_to_cpu()[0]  # noqa: E731
    staging = HostStaging(tuple(batch.shape), device_id)
    staging.array[...] = batch  # the rows a consumer would have assembled in the pinned buffer

    def device_step() -> np.ndarray:
        staging.copy_to(device_in)  # host->device, blocking
        session.run_with_iobinding(io)  # ORT synchronises its CUDA stream before returning
        return fetch()

    def host_step() -> np.ndarray:
        session.run_with_iobinding(io)  # the CPU node reads the pinned buffer; ORT moves the rest
        return fetch()

    step, note = device_step, f"host buffer: {staging.strategy}"
    if bind_time is None:
        note += "; bind-time self-check inconclusive (same output for every probe input)"
    if not _close_enough(np.asarray(device_step()), expected):
        io.bind_ortvalue_input(input_name, staging.host_value)
        step = host_step
        note += (
            "; input bound as the pinned host buffer: the input is consumed on CPU, where ORT "
            "copies a device-bound input once at bind time"
        )
        if not _close_enough(np.asarray(host_step()), expected):
            staging.close()
            raise RuntimeError(
                "IOBinding output differs from session.run on the same batch, with the input bound on the device and on the host"
            )
    # The binding holds raw pointers: keep the bound buffers alive as long as the step.
    step.keepalive = (io, device_in)  # type: ignore[attr-defined]
    return step, staging, note


def run_bench(
    models: Iterable[str] = DEFAULT_MODELS,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    seconds: float = DEFAULT_SECONDS,
    *,
    modes: Sequence[str] = MODES,
    models_dir: Path = MODELS_DIR,
    device_id: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every model x batch size x mode; returns the JSON-ready report.

    Report keys: ``config``, ``machine`` (:func:`machine_info`), ``cuda`` (:class:`CudaStatus` as a
    dict, plus ``host_buffer`` strategies seen), ``results`` (one :class:`Result` dict per
    model/batch/mode, in measurement order). Missing model files raise FileNotFoundError up front.
    """
    models, batch_sizes = list(models), [int(b) for b in batch_sizes]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; known: {list(MODES)}")
    paths = {m: models_dir / f"{m}.onnx" for m in models}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"model file(s) not found: {', '.join(missing)}")
    started = datetime.now(UTC).isoformat(timespec="seconds")

    want_cuda = any(m in CUDA_MODES for m in modes)
    cuda = prepare_cuda(paths[models[0]], device_id) if want_cuda and models else CudaStatus(False, "not requested")
    if want_cuda:
        if cuda.available:
            log(
                f"CUDA: available ({cuda.preload}); provider options: "
                + ", ".join(
                    f"{k}={v}"
                    for k, v in sorted(cuda.provider_options.items())
                    if k in ("device_id", "use_tf32", "cudnn_conv_algo_search", "arena_extend_strategy")
                )
            )
        else:
            log(f"CUDA: skipped: {cuda.reason}")
            if cuda.hint:
                log(f"CUDA: hint: {cuda.hint}")
            log(f"CUDA: preload: {cuda.preload}")

    inputs = load_windows(max(batch_sizes)) if batch_sizes else np.empty((0, 420), np.float32)
    results: list[Result] = []
    host_buffers: dict[str, str] = {}
    for model in models:
        cpu_session = _cpu_session(paths[model]) if "cpu" in modes else None
        cuda_session = None
        cuda_error = ""
        if cuda.available and CUDA_MODES & set(modes):
            try:
                cuda_session = ort.InferenceSession(str(paths[model]), providers=_cuda_provider(device_id))
                if cuda_session.get_providers()[0] != CUDA_PROVIDER:
                    cuda_error, cuda_session = f"session fell back to {cuda_session.get_providers()}", None
            except Exception as err:  # one model failing on CUDA must not stop the others
                cuda_error = f"creating the CUDA session failed: {type(err).__name__}: {err}"
        for batch_size in batch_sizes:
            batch = inputs[:batch_size]
            reference: np.ndarray | None = None
            cpu_rate: float | None = None
            for mode in modes:
                if mode in CUDA_MODES and cuda_session is None:
                    # The full reason is printed once (and kept in report["cuda"]); rows stay short.
                    note = cuda_error or (
                        "no CUDA provider"
                        if CUDA_PROVIDER not in ort.get_available_providers()
                        else "CUDA provider failed to load"
                    )
                    results.append(Result(model, batch_size, mode, "skipped", note=note))
                    continue
                try:
                    if mode == "cpu":
                        assert cpu_session is not None, "created above when modes include cpu"
                        result, out = _timed_result(model, batch_size, mode, _plain_run(cpu_session, batch), seconds)
                        reference, cpu_rate = out.astype(np.float64), result.rows_per_s
                        result.speedup_vs_cpu = 1.0
                    elif mode == "cuda":
                        assert cuda_session is not None, "CUDA modes without a session are skipped above"
                        result, out = _timed_result(model, batch_size, mode, _plain_run(cuda_session, batch), seconds)
                        _compare(result, out, reference, cpu_rate)
                    else:
                        others = np.ascontiguousarray(inputs[::-1][:batch_size])  # other rows, for the self-check
                        step, staging, note = _iobinding_step(cuda_session, batch, device_id, others)
                        try:
                            result, out = _timed_result(model, batch_size, mode, step, seconds, note=note)
                        finally:
                            staging.close()
                        host_buffers[staging.strategy] = staging.detail
                        _compare(result, out, reference, cpu_rate)
                except Exception as err:  # record and go on: one broken config must not hide the rest
                    result = Result(model, batch_size, mode, "error", note=f"{type(err).__name__}: {err}"[:500])
                results.append(result)
                log(_progress_line(result))
        cpu_session = cuda_session = None  # release the model's sessions before the next one

    cuda_dict = asdict(cuda)
    cuda_dict["host_buffer"] = host_buffers
    return {
        "started": started,
        "config": {
            "models": models,
            "batch_sizes": batch_sizes,
            "seconds": seconds,
            "modes": list(modes),
            "device_id": device_id,
            "warmup": f">= {MIN_WARMUP_RUNS} runs and >= {WARMUP_FRACTION} x seconds",
            "min_timed_batches": MIN_TIMED_BATCHES,
            "rel_tolerance": REL_TOLERANCE,
            "inputs": "C-MAPSS FD001 test windows, tiled to the batch size",
        },
        "machine": machine_info(),
        "cuda": cuda_dict,
        "results": [asdict(r) for r in results],
    }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _progress_line(r: Result) -> str:
    """One line per finished measurement, so a long run shows it is alive."""
    if r.status != "ok":
        return f"  {r.model:<18} batch {r.batch:>5} {r.mode:<15} {r.status}: {r.note}"
    return (
        f"  {r.model:<18} batch {r.batch:>5} {r.mode:<15} {r.rows_per_s:>12,.0f} rows/s  "
        f"p50 {r.p50_ms:8.3f} ms  p99 {r.p99_ms:8.3f} ms  ({r.batches} batches)"
    )


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the report's results (skipped/error rows show their reason)."""
    header = (
        f"{'model':<18} {'batch':>5} {'mode':<15} {'rows/s':>12} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'speedup':>8} {'max|d| vs cpu':>13}  note"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"{r['model']:<18} {r['batch']:>5} {r['mode']:<15} {r['status'].upper():>12}  {r['note']}")
            continue
        speedup = f"{r['speedup_vs_cpu']:.2f}x" if r["speedup_vs_cpu"] else "-"
        diff = "-" if r["max_abs_diff_vs_cpu"] is None else f"{r['max_abs_diff_vs_cpu']:.2e}"
        note = r["note"]
        if r["outputs_agree"] is False:
            note = (note + "; " if note else "") + f"OUTPUTS DIFFER (rel {r['max_rel_diff_vs_cpu']:.1e})"
        lines.append(
            f"{r['model']:<18} {r['batch']:>5} {r['mode']:<15} {r['rows_per_s']:>12,.0f} "
            f"{r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} {speedup:>8} {diff:>13}  {note}"
        )
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m stream_infer.tools.bench.gpu",
        description="Time the bundled ONNX models on ONNX Runtime's CPU and CUDA providers "
        "(plain run and IOBinding with pinned host memory); CUDA rows are skipped "
        "with a reason where no CUDA provider works.",
    )
    parser.add_argument(
        "--models",
        type=_name_list,
        default=list(DEFAULT_MODELS),
        help=f"comma-separated model names in {MODELS_DIR} (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=list(DEFAULT_BATCH_SIZES),
        help=f"comma-separated rows per batch (default: {','.join(map(str, DEFAULT_BATCH_SIZES))})",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"timed seconds per model/batch/mode, after warm-up (default: {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--modes", type=_name_list, default=list(MODES), help=f"comma-separated subset of {','.join(MODES)} (default: all)"
    )
    parser.add_argument("--device-id", type=int, default=0, help="CUDA device ordinal (default: 0)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="folder holding <model>.onnx")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report to this JSON file")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s) {bad}; choose from {','.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status (0 unless misused)."""
    args = parse_args(argv)
    configs = len(args.models) * len(args.batch_sizes) * len(args.modes)
    print(
        f"onnxruntime {ort.__version__} ({getattr(ort, 'package_name', '?')}), device {ort.get_device()}, "
        f"providers {ort.get_available_providers()}, {os.cpu_count()} CPUs, GPU: {gpu_name() or 'none found'}"
    )
    print(f"{configs} configs x ~{args.seconds * (1 + WARMUP_FRACTION):g} s (plus session set-up)", flush=True)
    try:
        report = run_bench(
            args.models,
            args.batch_sizes,
            args.seconds,
            modes=args.modes,
            models_dir=args.models_dir,
            device_id=args.device_id,
            log=lambda line: print(line, flush=True),
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(format_table(report["results"]))
    cuda = report["cuda"]
    if not cuda["available"] and any(m in CUDA_MODES for m in args.modes):
        print(f"\nCUDA rows skipped: {cuda['reason']}")
        if cuda["hint"]:
            print(f"hint: {cuda['hint']}")
    for strategy, detail in cuda["host_buffer"].items():
        print(f"cuda_iobinding host buffer: {strategy}" + (f" ({detail})" if detail else ""))
    diffs = [r for r in report["results"] if r["outputs_agree"] is False]
    if diffs:
        print(f"\nWARNING: {len(diffs)} CUDA row(s) differ from CPU by more than {REL_TOLERANCE:g} (relative)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
