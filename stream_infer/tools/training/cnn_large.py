"""Build ``engines_cnn_large.onnx``: a ~1M-parameter 1D-CNN over the engine window, for timing only.

The weights are **random** (numpy ``default_rng(42)``, He-scaled), **not trained**: the model exists
so the GPU benchmark (:mod:`stream_infer.tools.bench.gpu`) has a model whose cost per row is dominated by
arithmetic (~31 MFLOP/row, vs ~0.1 MFLOP/row for the bundled ``engines_rul`` MLP). Its predictions
mean nothing; never serve it.

Contract of the exported file (same signature as ``engines_rul.onnx``, so any code path that runs one
can run the other):

* input ``features``: float32 [None, 420] = the last 30 cycles x 14 sensors of one engine, oldest
  cycle first, flattened row-major (:func:`stream_infer.tools.training.data.window_features`);
* output ``rul``: float32 [None, 1] (unbounded: no clip, the weights are random);
* opset 17, IR version 8; byte-identical on every rebuild with the same numpy/onnx versions
  (seeded weights, no timestamps, fixed node names);
* parameters = every float32 initializer element: :func:`param_count` computes it from the
  architecture alone (numpy only), and ``engines_cnn_large.json`` records it with the file's sha256.

Graph (N = batch)::

    features [N,420] -> Reshape [N,30,14] -> (x - mean) * inv_std   (per sensor, from train_FD001)
    -> Transpose [N,14,30]
    -> Conv1d 14->128 k3 pad1 -> Relu -> Conv1d 128->256 k3 pad1 -> Relu -> Conv1d 256->512 k3 pad1 -> Relu
    -> GlobalAveragePool over time [N,512,1] -> Flatten [N,512]
    -> Gemm 512->1024 -> Relu -> Gemm 1024->1 -> rul [N,1]

The per-sensor scaling keeps activations O(1) on raw sensor values (some are ~2400), so the CPU vs
CUDA comparison in the benchmark measures float rounding, not the magnification of huge inputs.

Run with the ``train`` extra's ``onnx`` installed: ``python -m stream_infer.tools.training.cnn_large
[--out-dir DIR]``. Only :func:`build_model` and :func:`main` import ``onnx`` (lazily), so importing
this module (e.g. for :func:`param_count` in tests) needs numpy alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stream_infer.tools.training.args import model_parser

from . import data

if TYPE_CHECKING:  # only for annotations: onnx is not a runtime dependency
    import onnx

MODEL_NAME = "engines_cnn_large"
INPUT_NAME = "features"
OUTPUT_NAME = "rul"
#: Opset 17 / IR 8: what the bundled models use, loadable by every onnxruntime the project supports.
OPSET = 17
IR_VERSION = 8
SEED = data.SEED  # 42, as everywhere in training
WINDOW = data.ENGINE_WINDOW  # 30 cycles
SENSORS = len(data.ENGINE_FEATURES)  # 14
#: Output channels of the three convolutions, their kernel width, and the hidden Gemm width.
#: 128/256/512 and 1024 were chosen to land near 1M parameters (1,024,157 in all).
CONV_CHANNELS: tuple[int, ...] = (128, 256, 512)
KERNEL = 3
HIDDEN = 1024
REBUILD_COMMAND = "python -m stream_infer.tools.training.cnn_large"


def layer_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of every float32 initializer, in graph order (the scaling constants first).

    This is the single source of the architecture: :func:`make_weights`, :func:`param_count` and
    :func:`build_model` all read it, so the recorded count cannot drift from the file.
    """
    shapes: list[tuple[str, tuple[int, ...]]] = [("scale_mean", (SENSORS,)), ("scale_inv_std", (SENSORS,))]
    in_ch = SENSORS
    for i, out_ch in enumerate(CONV_CHANNELS, start=1):
        # ONNX Conv weight layout: [out_channels, in_channels, kernel].
        shapes += [(f"conv{i}_W", (out_ch, in_ch, KERNEL)), (f"conv{i}_B", (out_ch,))]
        in_ch = out_ch
    # Gemm with transB=1: weight [out, in], as PyTorch's Linear stores it.
    shapes += [("fc1_W", (HIDDEN, in_ch)), ("fc1_B", (HIDDEN,)), ("fc2_W", (1, HIDDEN)), ("fc2_B", (1,))]
    return shapes


def param_count() -> dict[str, int]:
    """Exact parameter counts: ``total`` (all float32 initializer elements), ``weights_and_biases``
    (conv + gemm) and ``input_scaling`` (the 28 fixed per-sensor constants)."""
    sizes = {name: int(np.prod(shape)) for name, shape in layer_shapes()}
    scaling = sizes["scale_mean"] + sizes["scale_inv_std"]
    total = sum(sizes.values())
    return {"total": total, "weights_and_biases": total - scaling, "input_scaling": scaling}


def flops_per_row() -> int:
    """Multiply-adds x 2 for one input row (convolutions at full length 30 thanks to pad 1, plus the Gemms)."""
    flops = 0
    in_ch = SENSORS
    for out_ch in CONV_CHANNELS:
        flops += 2 * WINDOW * out_ch * in_ch * KERNEL
        in_ch = out_ch
    return flops + 2 * (in_ch * HIDDEN + HIDDEN)


def sensor_scaling() -> tuple[np.ndarray, np.ndarray]:
    """Per-sensor mean and 1/std (float32, shape (14,)) over every row of the bundled train_FD001."""
    sensors = data.engine_sensor_rows(data.load_cmapss("train")).astype(np.float64)
    mean = sensors.mean(axis=0)
    # The 14 informative sensors all vary in FD001; the floor only guards against a future subset.
    std = np.maximum(sensors.std(axis=0), 1e-6)
    return mean.astype(np.float32), (1.0 / std).astype(np.float32)


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """All float32 initializers, deterministic for a given seed (and numpy's Generator stream).

    Weights are He-normal (std = sqrt(2 / fan_in), fan_in = in_channels x kernel for a conv) because
    every layer but the last feeds a Relu; the last uses sqrt(1 / fan_in). Biases are zero, the
    usual He initialisation. Drawn in :func:`layer_shapes` order from one generator, so adding a
    layer at the end does not change the earlier ones.
    """
    rng = np.random.default_rng(seed)
    mean, inv_std = sensor_scaling()
    weights: dict[str, np.ndarray] = {"scale_mean": mean, "scale_inv_std": inv_std}
    for name, shape in layer_shapes():
        if name.startswith("scale_"):
            continue
        if name.endswith("_B"):
            weights[name] = np.zeros(shape, dtype=np.float32)
            continue
        fan_in = int(np.prod(shape[1:]))
        gain = 1.0 if name == "fc2_W" else 2.0
        weights[name] = (rng.standard_normal(shape) * np.sqrt(gain / fan_in)).astype(np.float32)
    return weights


def build_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ONNX graph described in the module docstring, with ``weights`` as initializers."""
    import onnx  # lazy: the training extra only
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(weights[name], name) for name, _ in layer_shapes()]
    # int64 shape for Reshape: not a parameter; -1 keeps the batch dimension dynamic.
    initializers.append(numpy_helper.from_array(np.array([-1, WINDOW, SENSORS], dtype=np.int64), "window_shape"))

    nodes = [
        helper.make_node("Reshape", [INPUT_NAME, "window_shape"], ["window"], name="to_window"),
        # Broadcast over the last axis (sensors): (x - mean) * (1 / std).
        helper.make_node("Sub", ["window", "scale_mean"], ["centred"], name="centre"),
        helper.make_node("Mul", ["centred", "scale_inv_std"], ["scaled"], name="scale"),
        # Conv1d wants channels (sensors) before time: [N,30,14] -> [N,14,30].
        helper.make_node("Transpose", ["scaled"], ["x0"], name="channels_first", perm=[0, 2, 1]),
    ]
    for i in range(1, len(CONV_CHANNELS) + 1):
        nodes += [
            helper.make_node(
                "Conv",
                [f"x{i - 1}", f"conv{i}_W", f"conv{i}_B"],
                [f"conv{i}"],
                name=f"conv{i}",
                kernel_shape=[KERNEL],
                pads=[1, 1],
                strides=[1],
                dilations=[1],
                group=1,
            ),
            helper.make_node("Relu", [f"conv{i}"], [f"x{i}"], name=f"relu{i}"),
        ]
    last = f"x{len(CONV_CHANNELS)}"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["pooled"], name="mean_over_time"),  # [N,512,1]
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),  # [N,512]
        helper.make_node("Gemm", ["flat", "fc1_W", "fc1_B"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["h1"], name="relu_fc1"),
        helper.make_node("Gemm", ["h1", "fc2_W", "fc2_B"], [OUTPUT_NAME], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, WINDOW * SENSORS])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="stream_infer.tools.training.cnn_large",
        # A fixed string, not a package version: the bytes must not change with the onnx install.
        producer_version="1",
        doc_string="Timing only: random weights (seed 42, He-scaled), not trained.",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)  # full_check runs shape inference too
    return model


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shaped the bytes, recorded in the metadata."""
    versions = {"python": platform.python_version()}
    for package in ("numpy", "onnx"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def metadata(model_bytes: bytes) -> dict:
    """The ``engines_cnn_large.json`` payload for the serialised model ``model_bytes``."""
    counts = param_count()
    return {
        "model_name": MODEL_NAME,
        "onnx_file": f"{MODEL_NAME}.onnx",
        "purpose": "timing only: random weights, not trained",
        "task": "none (benchmark stand-in with the engines_rul signature); outputs are meaningless",
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, WINDOW * SENSORS]},
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, 1]}],
        "feature_order": list(data.ENGINE_FEATURES),
        "window": WINDOW,
        "window_layout": "last `window` cycles of one engine, oldest first, flattened row-major "
        "(all 14 sensors of the oldest cycle first), as engines_rul",
        "architecture": [
            f"Reshape [N,{WINDOW * SENSORS}] -> [N,{WINDOW},{SENSORS}]",
            "per-sensor (x - mean) * inv_std, constants from every row of train_FD001",
            f"Transpose -> [N,{SENSORS},{WINDOW}]",
            *[f"Conv1d {a}->{b} k{KERNEL} pad1 + Relu" for a, b in zip((SENSORS, *CONV_CHANNELS[:-1]), CONV_CHANNELS)],
            f"GlobalAveragePool over time + Flatten -> [N,{CONV_CHANNELS[-1]}]",
            f"Gemm {CONV_CHANNELS[-1]}->{HIDDEN} + Relu",
            f"Gemm {HIDDEN}->1",
        ],
        "parameters": counts["total"],
        "parameters_breakdown": {
            "weights_and_biases": counts["weights_and_biases"],
            "input_scaling_constants": counts["input_scaling"],
            "rule": "parameters = number of float32 initializer elements",
        },
        "flops_per_row": flops_per_row(),
        "init": {
            "seed": SEED,
            "generator": "numpy.random.default_rng(seed).standard_normal, drawn in layer order",
            "weights": "He-normal: std sqrt(2/fan_in) (fc2: sqrt(1/fan_in)); fan_in = in_channels*kernel or in_features",
            "biases": "zero",
        },
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "file_bytes": len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "rebuild": REBUILD_COMMAND,
        "versions": library_versions(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see ``--help``)."""
    parser = model_parser(
        f"python -m {__name__}",
        "Build engines_cnn_large.onnx (random weights, timing only) and its metadata JSON.",
        "engines_cnn_large.onnx/.json",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build, write and describe the model; returns the process exit status."""
    args = parse_args(argv)
    model = build_model(make_weights(SEED))
    model_bytes = model.SerializeToString()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{MODEL_NAME}.onnx"
    onnx_path.write_bytes(model_bytes)
    payload = metadata(model_bytes)
    (out_dir / f"{MODEL_NAME}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(
        f"wrote {onnx_path} ({len(model_bytes):,} bytes, sha256 {payload['sha256'][:16]}...), "
        f"{payload['parameters']:,} parameters, {payload['flops_per_row'] / 1e6:.1f} MFLOP/row"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
