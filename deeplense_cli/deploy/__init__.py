"""Deployment: ONNX export with its checks (``export``), graph rewrites (``onnx_graph``), ONNX
Runtime sessions (``onnx_session``), prediction on image files (``predict``) and the
export-friendly layers plugins build their models from (``layers``).

Imports ``core``, ``data``, ``registry``, ``runs`` and ``evaluation``. ``predict`` and
``onnx_session`` never import torch: predicting with an ONNX file needs only ONNX Runtime.
"""
