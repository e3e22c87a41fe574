"""ONNX export and evaluation helpers shared by the two training scripts (training-only imports)."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common import tree_ensemble
from skl2onnx.common.data_types import FloatTensorType

from stream_infer.models import MODELS_DIR

#: Upper bounds on the opsets; skl2onnx picks the lowest that suffice (today: opset 16,
#: ai.onnx.ml 1, IR version 8), which onnxruntime 1.11 and later load.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}

#: Name of the single model input, shared by both models and by the server.
INPUT_NAME = "features"

#: Rebuild command written into each metadata file.
REBUILD_COMMAND = "python -m stream_infer.tools.training all"

#: Default output folder: the package's models/ folder, whatever the CWD.
DEFAULT_OUT_DIR: Path = MODELS_DIR

_TRACKED_PACKAGES = ["numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime"]


def library_versions() -> dict[str, str]:
    """Versions of Python and of the training libraries, recorded in each metadata file."""
    versions = {"python": platform.python_version()}
    for package in _TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:  # only when run from an unusual install
            versions[package] = "not installed"
    return versions


@contextmanager
def _integer_missing_flags() -> Iterator[None]:
    """skl2onnx 1.20 writes a HistGradientBoosting leaf's `nodes_missing_value_tracks_true` as
    the Python bool False beside the branches' numpy integers, and onnx 1.23 refuses a bool in an
    ints attribute, so every such conversion fails. Within this block the flag is passed on as
    an int (its value unchanged)."""
    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def to_onnx(model: Any, n_features: int, name: str, options: dict | None = None) -> onnx.ModelProto:
    """Convert a fitted sklearn estimator whose input is float32 (N, n_features) to ONNX.

    The graph is named ``name``: skl2onnx otherwise names it with a random UUID, the only thing
    that kept two identical training runs from writing byte-identical files.
    """
    with _integer_missing_flags():
        onnx_model = convert_sklearn(
            model,
            name=name,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=TARGET_OPSET,
            options=options,
        )
    onnx_model.graph.name = name
    onnx_model.doc_string = ""
    return onnx_model


#: The two outputs of every exported classifier: argmax class and the class probabilities.
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"


def classifier_to_onnx(model: Any, n_features: int, name: str) -> onnx.ModelProto:
    """A fitted binary classifier as ONNX without ZipMap, with outputs ``label`` (int64) and
    ``probabilities`` (float32 [N, 2]), whatever skl2onnx names them."""
    onnx_model = to_onnx(model, n_features, name, options={"zipmap": False})
    names = [o.name for o in onnx_model.graph.output]
    if names != [LABEL_OUTPUT, PROBA_OUTPUT]:  # skl2onnx's defaults today; rename if they move
        for old, new in zip(names, [LABEL_OUTPUT, PROBA_OUTPUT]):
            rename_output(onnx_model, old, new)
    check_io(onnx_model, {LABEL_OUTPUT: TensorProto.INT64, PROBA_OUTPUT: TensorProto.FLOAT})
    return onnx_model


def positive_probability(model: onnx.ModelProto | bytes, X: np.ndarray) -> np.ndarray:
    """Column 1 of ``probabilities`` (float32 (N,)), computed by onnxruntime on an exported classifier."""
    (proba,) = session(model).run([PROBA_OUTPUT], {INPUT_NAME: X})
    return proba[:, 1]


def rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename graph output ``old`` to ``new`` in place, fixing every node that reads or writes it."""
    for node in model.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for output in model.graph.output:
        if output.name == old:
            output.name = new


def clip_output(model: onnx.ModelProto, output: str, low: float, high: float) -> None:
    """Append a Clip node so graph output ``output`` is bounded to [low, high], in place.

    The converter's node is rewired to write ``{output}_raw``; the Clip writes ``output``, so the
    graph's output name and shape do not change.
    """
    raw = f"{output}_raw"
    for node in model.graph.node:
        node.output[:] = [raw if name == output else name for name in node.output]
        node.input[:] = [raw if name == output else name for name in node.input]
    low_name, high_name = f"{output}_clip_low", f"{output}_clip_high"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(low, dtype=np.float32), low_name),
            numpy_helper.from_array(np.array(high, dtype=np.float32), high_name),
        ]
    )
    model.graph.node.append(helper.make_node("Clip", [raw, low_name, high_name], [output], name=f"{output}_clip"))
    # Clip with min/max as inputs needs opset >= 11 in the default domain.
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 11:
            opset.version = 11


def check_io(model: onnx.ModelProto, outputs: dict[str, int]) -> None:
    """Validate the graph and check it has the one float input and the named outputs/elem types."""
    onnx.checker.check_model(model)
    inputs = [i for i in model.graph.input]
    if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"unexpected inputs {[i.name for i in inputs]}")
    found = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    if found != outputs:
        raise ValueError(f"unexpected outputs {found}, expected {outputs}")


def session(model: onnx.ModelProto | bytes) -> ort.InferenceSession:
    """An onnxruntime CPU session on an in-memory model: metrics come from ONNX, not sklearn."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def output_shapes(sess: ort.InferenceSession) -> dict[str, list]:
    """Output name -> shape with symbolic/unknown dimensions written as None (JSON null)."""
    return {o.name: [d if isinstance(d, int) else None for d in o.shape] for o in sess.get_outputs()}


def save_model(model: onnx.ModelProto, path: Path) -> bytes:
    """Serialise ``model`` to ``path`` (deterministic bytes for a given graph) and return the bytes."""
    data = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def write_json(path: Path, payload: dict) -> None:
    """Write metadata as stable, human-readable JSON (2-space indent, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
