"""The plugin's logger is registered through the ``register_loggers`` hook."""

from deeplense_example_plugin.wandb_logger import WandbLogger

from deeplense_cli.registry.manager import loggers


def test_wandb_logger_is_registered() -> None:
    wandb = loggers()["wandb"]
    assert wandb.plugin == "example" and wandb.factory is WandbLogger
    assert wandb.requires == ("wandb",)
    assert "deeplense-example-plugin[wandb]" in wandb.install
