"""The bundled ONNX models and their metadata (`<name>.onnx` beside `<name>.json`: features,
outputs, offline metrics, how to rebuild), installed with the package."""

from pathlib import Path

MODELS_DIR: Path = Path(__file__).resolve().parent
