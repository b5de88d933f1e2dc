"""Deployment: ONNX export with its checks (``export``), graph rewrites (``onnx_graph``), ONNX
Runtime sessions (``onnx_session``) and prediction on image files (``predict``).

Imports ``core``, ``data``, ``registry``, ``runs``, ``evaluation`` and ``layers`` (the
export forms it swaps in). ``predict`` and ``onnx_session`` never import torch: predicting
with an ONNX file needs only ONNX Runtime.
"""
