"""Export-friendly layers that models are built from: attention that exports as ONNX
Runtime's fused node (``attention``) and the stand-ins swapped in on the copy being exported
(``export_forms``).

Below the engines: imports torch and nothing else from deeplense_cli, so plugins (through the
package's top level) and ``deploy`` both use it without reaching into each other.
"""
