"""Reproducible training of the two bundled ONNX models.

Run ``python -m stream_infer.tools.training engines|machines|all [--out-dir DIR]`` (needs the optional
``train`` extra: scikit-learn, skl2onnx, onnx, onnxruntime, numpy). The serving side imports only
:mod:`stream_infer.tools.training.data`, which depends on numpy and the standard library alone; this
``__init__`` deliberately imports nothing so that stays true.
"""
