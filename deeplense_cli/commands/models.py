"""``deeplense models`` and ``deeplense plugins``: what is installed."""

from __future__ import annotations

import json
from typing import Any

import click

from deeplense_cli.core.console import console, print_json
from deeplense_cli.registry.manager import architectures, get_architecture, plugin_summary


def _count_parameters(arch: Any) -> int | None:
    try:
        model = arch.build(image_size=arch.image_sizes[0])
    except Exception:  # a broken factory is reported in the table, not fatal
        return None
    return sum(p.numel() for p in model.parameters())


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List registered architectures (name, plugin, parameters, input sizes)."""
    if ctx.invoked_subcommand is not None:
        return

    rows: list[dict[str, Any]] = []
    for arch in architectures().values():
        rows.append(
            {
                "name": arch.name,
                "plugin": arch.plugin,
                "parameters": _count_parameters(arch),
                "image_sizes": list(arch.image_sizes),
                "description": arch.description,
            }
        )
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="Registered architectures")
    table.add_column("name", no_wrap=True)
    table.add_column("plugin", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("input sizes", no_wrap=True)
    table.add_column("description", overflow="fold", ratio=1)
    for row in rows:
        params = "broken" if row["parameters"] is None else f"{row['parameters'] / 1e6:.2f} M"
        sizes = ", ".join(f"{s}x{s}" for s in row["image_sizes"])
        table.add_row(row["name"], row["plugin"], params, sizes, row["description"])
    console().print(table)


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(name: str, as_json: bool) -> None:
    """Show an architecture's default hyper-parameters and training defaults."""

    arch = get_architecture(name)
    info = {
        "name": arch.name,
        "plugin": arch.plugin,
        "description": arch.description,
        "image_sizes": list(arch.image_sizes),
        "hyperparameters": dict(arch.defaults),
        "train_defaults": dict(arch.train_defaults),
    }
    if as_json:
        print_json(info)
        return
    import yaml

    console().print(f"[bold]{arch.name}[/bold] ({arch.plugin}): {arch.description}")
    console().print(yaml.safe_dump(json.loads(json.dumps(info)), sort_keys=False), markup=False)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins and what each registers."""

    rows = plugin_summary()
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="Installed plugins")
    for col in ("plugin", "distribution", "hooks", "architectures", "loggers"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["name"],
            row["distribution"],
            ", ".join(row["hooks"]),
            ", ".join(row["architectures"]),
            ", ".join(row["loggers"]),
        )
    console().print(table)


@models.command("pretrained")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the full model cards).")
def pretrained(as_json: bool) -> None:
    """List the trained models that ship with deeplense: use a NAME wherever a model file goes
    (`deeplense predict Model_III images/`)."""
    from deeplense_cli.registry.pretrained import shipped_models

    shipped = shipped_models()
    if as_json:
        print_json([{**m.summary, "card": m.card} for m in shipped.values()])
        return
    from rich.table import Table

    table = Table(title="Shipped trained models")
    # the name never wraps (users type it); the rest wraps on a narrow terminal
    columns = ("name", "task", "architecture", "precision", "TTA", "on test", "macro AUC", "size")
    for column in columns:
        table.add_column(column, no_wrap=column == "name")
    for m in shipped.values():
        s = m.summary
        acc, auc, mae = s["test_accuracy"], s["test_macro_auc"], s["test_mae_dex"]
        score = "-"
        if acc is not None:
            score = f"{acc:.2%} of {s['test_images']}"
        elif mae is not None:  # a regressor: its error in dex
            score = f"MAE {mae:.3f} dex of {s['test_images']}"
        table.add_row(
            s["name"],
            str(s["task"]),
            str(s["architecture"]),
            str(s["precision"]),
            str(s["tta"]),
            score,
            "-" if auc is None else f"{auc:.5f}",  # the best are within 1e-4 of 1
            f"{s['size_mb']:.1f} MB",
        )
    console().print(table)
    if not shipped:
        console().print("No trained models ship with this installation.")
