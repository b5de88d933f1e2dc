"""The plugin's own test: the architecture meets deeplense's contract."""

from deeplense_example_plugin import TINY_CNN

from deeplense_cli import check_architecture


def test_tiny_cnn_meets_the_contract() -> None:
    check_architecture(TINY_CNN)  # 64 and 150 px: shapes, determinism, training, state_dict


def test_tiny_cnn_is_registered() -> None:
    from deeplense_cli import get_architecture

    assert get_architecture("tinycnn").plugin == "example"
