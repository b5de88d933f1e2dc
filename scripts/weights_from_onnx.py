"""Recover a shipped model's PyTorch weights from its ONNX file (maintainers only).

    python scripts/weights_from_onnx.py Model_III --data DATA/Model_III

The models shipped before ``train --init`` existed were exported from runs whose checkpoints
stayed on the machines that trained them. Their ONNX files hold every weight: the named
initializers are the PyTorch parameters under their own names, and the legacy exporter folded
each BatchNorm into the convolution before it (``onnx::Conv_*`` initializers, in module
order). The folded convolution is exact in eval mode with an identity BatchNorm; to keep
training-mode BatchNorm (fine-tuning) close to eval mode too, each BatchNorm gets the mean and
variance of its input over ``--data`` as running statistics, and the affine parameters that
undo them. The result is checked against ONNX Runtime on those images before it is written
(``NAME.safetensors`` beside ``NAME.onnx``) and recorded in the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.data.readers import find_images, read_image
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.deploy.onnx_session import OnnxModel
from deeplense_cli.registry.manager import get_architecture
from deeplense_cli.registry.pretrained import FOLDER, shipped_models

TOLERANCE = 1e-3  # max |logit error| against ONNX Runtime


def _images(folder: Path, per_class: int, size: int) -> np.ndarray:
    picked: list[np.ndarray] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in find_images([class_dir])[:per_class]:
            image, _ = read_image(path)
            if image.shape == (size, size):
                picked.append(image[None])
    if not picked:
        sys.exit(f"no {size}x{size} images under {folder}")
    return np.stack(picked).astype(np.float32)


def recover(name: str, data: Path, per_class: int, data_note: str = "") -> dict[str, Any]:
    import onnx
    import torch
    from onnx import numpy_helper
    from safetensors.torch import save_file

    shipped = shipped_models()[name.lower()]
    card, onnx_path = shipped.card, shipped.path
    proto = onnx.load(str(onnx_path))
    onnx_model = OnnxModel(onnx_path, device="cpu")
    transform = onnx_model.transform
    arch = get_architecture(card["config"]["model"]["name"])
    model = arch.build(
        image_size=int(transform["image_size"]),
        num_classes=len(card["classes"]),
        in_channels=int(transform.get("in_channels", 1)),
        **dict(card["config"]["model"].get("params") or {}),
    )
    model.eval()
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = model.state_dict()
    named = {k: torch.from_numpy(init[k].copy()) for k in state if k in init}

    # Each BatchNorm the exporter folded: the convolution just before it, in module order.
    modules = dict(model.named_modules())
    folded_pairs = []
    for mod_name, module in modules.items():
        if isinstance(module, torch.nn.BatchNorm2d):
            parent, index = mod_name.rsplit(".", 1)
            conv = modules.get(f"{parent}.{int(index) - 1}")
            if (
                isinstance(conv, torch.nn.Conv2d)
                and f"{parent}.{int(index) - 1}.weight" not in init
            ):
                folded_pairs.append((f"{parent}.{int(index) - 1}", mod_name))
    folded_convs = [
        n
        for n in proto.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1].startswith("onnx::")
    ]
    if len(folded_convs) != len(folded_pairs):
        sys.exit(
            f"{len(folded_convs)} folded convolutions in the file, {len(folded_pairs)} in the model"
        )
    for (conv_name, bn_name), node in zip(folded_pairs, folded_convs, strict=True):
        weight, bias = init[node.input[1]], init[node.input[2]]
        if tuple(weight.shape) != tuple(state[f"{conv_name}.weight"].shape):
            sys.exit(
                f"{conv_name}: shape {weight.shape} in the file, {state[conv_name + '.weight'].shape} here"
            )
        named[f"{conv_name}.weight"] = torch.from_numpy(weight.copy())
        # identity BatchNorm for now: eval output = folded conv + bias
        named[f"{bn_name}.weight"] = torch.ones_like(state[f"{bn_name}.weight"])
        named[f"{bn_name}.bias"] = torch.from_numpy(bias.copy())
        named[f"{bn_name}.running_mean"] = torch.zeros_like(state[f"{bn_name}.running_mean"])
        eps = modules[bn_name].eps
        named[f"{bn_name}.running_var"] = torch.full_like(state[f"{bn_name}.running_var"], 1 - eps)
        named[f"{bn_name}.num_batches_tracked"] = torch.tensor(0)
    missing = [k for k in state if k not in named]
    if missing:
        sys.exit(f"weights not found in {onnx_path.name}: {', '.join(missing[:5])}")
    model.load_state_dict(named)

    raw = _images(data, per_class, int(transform.get("source_size", transform["image_size"])))
    x = apply_transform(raw, transform)
    # Running statistics: the mean and variance of each BatchNorm's input over the images.
    sums: dict[str, list[torch.Tensor]] = {bn: [] for _, bn in folded_pairs}
    hooks = [
        modules[bn].register_forward_pre_hook(
            lambda _m, args, bn=bn: sums[bn].append(args[0].detach().transpose(0, 1).flatten(1))
        )
        for _, bn in folded_pairs
    ]
    with torch.inference_mode():
        model(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for _, bn in folded_pairs:
            values = torch.cat(sums[bn], dim=1).double()
            mean, var = values.mean(1), values.var(1, unbiased=False)
            module = modules[bn]
            module.running_mean.copy_(mean.float())
            module.running_var.copy_(var.float())
            module.bias.copy_((module.bias.double() + mean).float())
            module.weight.copy_(torch.sqrt(var + module.eps).float())

    with torch.inference_mode():
        got = model(torch.from_numpy(x)).numpy()
    want = onnx_model.logits(x)
    error = float(np.abs(got - want).max())
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    if error > TOLERANCE or agree < 1.0:
        sys.exit(f"{name}: recovered weights differ from the ONNX file (max |error| {error:.3g})")

    out = FOLDER / f"{shipped.name}.safetensors"
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic.atomic_path(out, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "deeplense-weights/1"})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    record = {
        "file": out.name,
        "format": "safetensors",
        "sha256": digest,
        "size_bytes": out.stat().st_size,
        "source": (
            f"recovered from {onnx_path.name} by scripts/weights_from_onnx.py: named "
            f"initializers as they are; {len(folded_pairs)} BatchNorms unfolded from their "
            f"convolutions with running statistics measured on {len(x)} images of "
            f"{data_note or data}"
        ),
        "check": {"images": len(x), "max_abs_logit_error": error, "argmax_agreement": agree},
    }
    card["weights"] = record
    atomic.write_text(FOLDER / f"{shipped.name}.json", json.dumps(card, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="shipped model, e.g. Model_III")
    parser.add_argument("--data", type=Path, required=True, help="class folders of its dataset")
    parser.add_argument("--per-class", type=int, default=256)
    parser.add_argument("--data-note", default="", help="how --data was made, for the card")
    args = parser.parse_args()
    print(json.dumps(recover(args.name, args.data, args.per_class, args.data_note), indent=2))


if __name__ == "__main__":
    main()
