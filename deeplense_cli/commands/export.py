"""``deeplense export FORMAT RUN``: ONNX built in; plugins add formats.

Plugins add formats with the ``register_export_formats(register)`` hook:
``register(name, click_command)`` makes ``deeplense export NAME`` run ``click_command``
(which takes the run directory as its first argument).
"""

from __future__ import annotations

import click

from deeplense_cli.commands.options import checkpoint_option
from deeplense_cli.core.console import console, err_console, print_json
from deeplense_cli.deploy.defaults import (
    DEFAULT_OPSET,
    DYNAMO_OPSET,
    EXPORTERS,
    VALIDATION_IMAGES,
)
from deeplense_cli.deploy.precision import (
    DEFAULT_INT8_SCHEME,
    DEFAULT_PRECISION,
    INT8_SCHEMES,
    PRECISIONS,
    file_name,
)
from deeplense_cli.evaluation.tta import TTA
from deeplense_cli.registry.manager import export_formats, warn


class ExportGroup(click.Group):
    """The ``export`` group: built-in formats plus those plugins register (loaded on use)."""

    def _plugin_formats(self) -> dict[str, click.Command]:
        found: dict[str, click.Command] = {}
        for name, fmt in export_formats(reserved=self.commands).items():
            if not isinstance(fmt.command, click.Command):
                warn(f"plugin {fmt.plugin!r}: export format {name!r} is not a click command")
                continue
            fmt.command.name = name
            found[name] = fmt.command
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._plugin_formats()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        return self._plugin_formats().get(cmd_name)


@click.group(cls=ExportGroup)
def export() -> None:
    """Export a trained run for deployment (ONNX; plugins may add formats)."""


@export.command(name="onnx")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Output file [default: "
    + ", ".join(f"RUN/{file_name(p)}" for p in PRECISIONS)
    + ", by --precision].",
)
@click.option(
    "--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset version."
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default=DEFAULT_PRECISION,
    show_default=True,
    help=" ".join(f"{name}: {text}." for name, text in PRECISIONS.items()),
)
@checkpoint_option()
@click.option(
    "--exporter",
    type=click.Choice(EXPORTERS),
    default=EXPORTERS[0],
    show_default=True,
    help="torch.onnx path: legacy (TorchScript) is fast and exports every built-in model; "
    f"auto falls back to dynamo (opset >= {DYNAMO_OPSET}) if it fails.",
)
@click.option(
    "--validation-images",
    type=click.IntRange(1),
    default=VALIDATION_IMAGES,
    show_default=True,
    help="Test images compared between PyTorch and ONNX Runtime.",
)
@click.option(
    "--standard-ops",
    is_flag=True,
    help="Only standard ONNX operators, for runtimes other than ONNX Runtime (OpenVINO, "
    "TensorRT's own parser, ...). By default CrossViT, PiT, T2TViT and CCT export their "
    "attention as ONNX Runtime's fused MultiHeadAttention (1.1-1.35x faster in ONNX Runtime "
    "on CPUs).",
)
@click.option(
    "--int8-scheme",
    type=click.Choice(list(INT8_SCHEMES)),
    help="With --precision int8: activation/weight integer types "
    f"[default: {DEFAULT_INT8_SCHEME}]. u8s8-7bit gives the same "
    "results on every x86 CPU; u8s8 (8-bit weights) is a little more precise on CPUs with "
    "VNNI and on ARM, but saturates ONNX Runtime's kernels on x86 CPUs without VNNI; u8u8 "
    "never saturates but is slower at large batches; s8s8 is slow on x86.",
)
@click.option(
    "--tta",
    type=click.Choice(TTA),
    default=TTA[0],
    show_default=True,
    help="Test-time augmentation the file asks for: predict and evaluate then average each "
    "image with its half turn unless told --tta none (recorded in its metadata).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def onnx_command(
    run_dir: str,
    output: str | None,
    opset: int,
    precision: str,
    checkpoint: str,
    exporter: str,
    validation_images: int,
    standard_ops: bool,
    int8_scheme: str | None,
    tta: str,
    as_json: bool,
) -> None:
    """Export RUN_DIR's model to one self-contained ONNX file with a dynamic batch axis.

    The file embeds the class names, input size and transform, so `deeplense predict
    model.onnx` needs nothing else. Every export is checked with onnx.checker and compared
    with PyTorch on the run's test images (batch 1 and 32) before it is written; a model
    that does not match is not written.
    """
    from deeplense_cli.deploy.export import export_onnx

    status = err_console().status("exporting", spinner="dots")
    if not as_json:
        status.start()
    try:
        result = export_onnx(
            run_dir,
            output=output,
            opset=opset,
            precision=precision,
            checkpoint=checkpoint,
            exporter=exporter,
            validation_images=validation_images,
            tta=tta,
            standard_ops=standard_ops,
            int8_scheme=int8_scheme,
            progress=lambda msg: status.update(msg),
        )
    finally:
        status.stop()
    if as_json:
        print_json(result.to_dict())
        return
    from rich.table import Table

    table = Table(title=f"ONNX Runtime vs PyTorch ({result.precision}, {result.data})")
    judged = any(c.judged_images is not None for c in result.checks)
    columns = ["batch", "images", "max abs error", "max rel error", "top class agrees"]
    columns += ["on images PyTorch decides"] if judged else []
    for col in [*columns, "ok"]:
        table.add_column(col, justify="right")
    for c in result.checks:
        cells = [
            str(c.batch_size),
            str(c.images),
            f"{c.max_abs_error:.2e}",
            f"{c.max_rel_error:.2e}",
            f"{c.argmax_agreement:.1%}",
        ]
        if judged:
            cells.append(f"{c.judged_agreement:.1%} of {c.judged_images}")
        table.add_row(*cells, "yes" if c.passed else "NO")
    out = console()
    out.print(table)
    if result.accuracy_torch is not None and result.accuracy_onnx is not None:
        change = 100 * (result.accuracy_onnx - result.accuracy_torch)
        out.print(
            f"Accuracy on these test images: PyTorch {result.accuracy_torch:.2%}, "
            f"ONNX {result.accuracy_onnx:.2%} ({change:+.2f} points)"
        )
    if result.regression:  # an axion-mass model: the check in mass units
        r = result.regression
        line = (
            f"log10 axion mass: ONNX within {r['max_abs_error_dex']:.2e} dex of PyTorch "
            f"(mean {r['mean_abs_error_dex']:.2e})"
        )
        if "mae_dex_torch" in r:
            line += (
                f"; MAE on these test images: PyTorch {r['mae_dex_torch']:.4f} dex, "
                f"ONNX {r['mae_dex_onnx']:.4f} dex"
            )
        out.print(line)
    if result.ood:
        ood = result.ood
        out.print(
            f"Out-of-distribution detector ({ood['method']}): fitted on {ood['fitted_on']}, "
            f"threshold {ood['threshold']:.4g} flags {ood['calibration_flagged']:.1%} of "
            f"{ood['calibrated_on']}"
        )
    for note in result.notes:
        out.print(f"[yellow]Note:[/] {note}")
    out.print(f"Tolerance: {result.tolerance}")
    out.print(f"{result.precision}: {PRECISIONS[result.precision]}")
    if result.int8_scheme:
        out.print(f"int8 scheme: {result.int8_scheme} (--int8-scheme)")
    ops = (
        f"ONNX Runtime operators {', '.join(result.contrib_ops)} (--standard-ops to avoid)"
        if result.contrib_ops
        else "standard ONNX operators only"
    )
    out.print(
        f"Wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset}, "
        f"{result.exporter} exporter, {ops}, {result.seconds:.1f} s)"
    )
