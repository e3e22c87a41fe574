"""Infer: one ONNX Runtime session per pipeline. No Kafka here.

Contract: :class:`InferenceEngine` checks at construction that the model's input matches the
feature spec (one float input of width `spec.width`) and that the outputs the pipeline reads exist,
raising :class:`ModelError` with one clear line otherwise. :meth:`run` takes a float32 matrix and
returns the named outputs; it is thread-safe (ONNX Runtime sessions are) and releases the GIL, so
the worker runs it in an executor while the event loop keeps consuming.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stream_infer.config import PipelineConfig
from stream_infer.controller import CostProfile

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """The model file cannot serve this pipeline; the message says why."""


def model_version(path: Path) -> str:
    """A content hash: the same bytes give the same version wherever they are deployed."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def choose_providers(device: str) -> list[str]:
    """CUDA when asked for (or `auto`) and present in this onnxruntime build, else CPU."""
    available = ort.get_available_providers()
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        _preload_cuda_libraries()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        log.warning(
            "device = cuda, but this onnxruntime has no CUDA provider (available: %s); running on CPU. "
            "Install the gpu extra (onnxruntime-gpu) for CUDA.",
            ", ".join(available),
        )
    return ["CPUExecutionProvider"]


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (as PyTorch installs them) when this
    onnxruntime-gpu build can (>= 1.21); without it the CUDA provider fails to load unless
    LD_LIBRARY_PATH names those folders, and the session silently runs on CPU."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as err:  # libraries may come from the system instead: the session decides
        log.warning("onnxruntime.preload_dlls() failed: %s; relying on the system's CUDA libraries", err)


class InferenceEngine:
    def __init__(
        self, model_path: Path, *, width: int, outputs: list[str], device: str = "auto", intra_op_threads: int = 1
    ) -> None:
        if not model_path.is_file():
            raise ModelError(f"model file {model_path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        # The worker drives batches from its own thread; inter-op parallelism only adds contention.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=choose_providers(device))
        except Exception as err:  # onnxruntime raises several types for unreadable models
            raise ModelError(f"model file {model_path} cannot be loaded by ONNX Runtime: {err}") from None
        self.name = model_path.stem
        self.version = model_version(model_path)
        self.provider = self.session.get_providers()[0]
        if (
            device == "cuda"
            and self.provider != "CUDAExecutionProvider"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            log.warning("device = cuda, but the CUDA provider did not load (CUDA/cuDNN libraries not found?); running on CPU")
        self._check_signature(model_path, width, outputs)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = outputs
        self.width = width  # columns of the input matrix, checked against the model above

    def _check_signature(self, path: Path, width: int, outputs: list[str]) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {path.name} has {len(inputs)} inputs; stream-infer feeds exactly one (the feature matrix)")
        spec = inputs[0]
        if spec.type != "tensor(float)":
            raise ModelError(f"model {path.name} input {spec.name!r} is {spec.type}; the feature matrix is tensor(float)")
        if len(spec.shape) != 2 or spec.shape[1] != width:
            raise ModelError(
                f"model {path.name} input {spec.name!r} has shape {spec.shape}, but the feature spec makes rows of "
                f"{width} columns: fix [features] (fields, one_hot, window) or use the matching model"
            )
        have = {o.name for o in self.session.get_outputs()}
        missing = [o for o in outputs if o not in have]
        if missing:
            raise ModelError(f"model {path.name} has no output(s) {missing}; it has {sorted(have)}")

    def run(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, {self.input_name: matrix})
        return dict(zip(self.output_names, results))

    def warm_up(self, batch_sizes: tuple[int, ...]) -> float:
        """Run zero batches of the given sizes so the first real batch pays no allocation cost."""
        started = time.perf_counter()
        for size in batch_sizes:
            self.run(np.zeros((size, self.width), dtype=np.float32))
        return time.perf_counter() - started


def engine_for(config: PipelineConfig) -> InferenceEngine:
    """The pipeline's engine, with the session settings its config names (the worker and
    `stream-infer score` build theirs here, so both run the same session)."""
    return InferenceEngine(
        config.model,
        width=config.features.width,
        outputs=[config.outputs.output],
        device=config.engine.device,
        intra_op_threads=config.engine.intra_op_threads,
    )


def calibrate(engine: InferenceEngine, sizes: list[int], profile: CostProfile, within_s: float, max_seconds: float = 3.0) -> int:
    """Time `engine` at each of `sizes` (ascending) into `profile`, and return the largest size up
    to which every size ran within `within_s` seconds (0: none did). Each size runs once untimed
    (its first run allocates) and then 5 times (2 above 64 rows) for the mean. Stops early past
    `max_seconds`, so a slow model costs a bounded start-up; live batches refine the profile."""
    limit, previous, started_all = 0, 0, time.perf_counter()
    for rows in sizes:
        matrix = np.zeros((rows, engine.width), dtype=np.float32)
        engine.run(matrix)
        repeats = 5 if rows <= 64 else 2
        started = time.perf_counter()
        for _ in range(repeats):
            engine.run(matrix)
        seconds = (time.perf_counter() - started) / repeats
        profile.observe(rows, seconds)
        if seconds <= within_s and limit == previous:  # every smaller size fitted too
            limit = rows
        previous = rows
        if time.perf_counter() - started_all > max_seconds:
            break
    return limit
