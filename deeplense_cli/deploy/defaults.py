"""What export and prediction offer and their defaults: the one place these facts are written.

The engine (:mod:`~deeplense_cli.deploy.export`, :mod:`~deeplense_cli.deploy.onnx_session`,
:mod:`~deeplense_cli.deploy.predict`) checks its arguments with them, and the command line
and the Python API take their choices and defaults from them. No imports, so that ``deeplense
predict --help`` and ``deeplense export onnx --help`` read them without NumPy (the engine
modules load it at import). The precisions and int8 schemes are in
:mod:`~deeplense_cli.deploy.precision`, light as well.
"""

# ONNX Runtime's execution provider for each --device, slowest first; auto takes the fastest
# that loads (TensorRT, else CUDA, else the CPU).
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEVICES = ("auto", *PROVIDERS)  # the first is the default
# Images per batch when predicting (ONNX Runtime, or PyTorch for a run).
PREDICT_BATCH_SIZE = 64
# The files predict writes, by extension (.jsonl: JSON Lines).
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json"}

# torch.onnx paths: legacy (TorchScript tracing) and dynamo, which needs opset DYNAMO_OPSET or
# later; auto tries them in that order.
EXPORTERS = ("auto", "legacy", "dynamo")  # the first is the default
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 7, 23  # what an export accepts
DYNAMO_OPSET = 18
# Test images of the run compared between PyTorch and ONNX Runtime before a file is written.
VALIDATION_IMAGES = 256
