"""The architecture contract, checked over every registered architecture, and the
contract check itself (it must catch broken models)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn as nn

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.registry.architecture import Architecture
from deeplense_cli.registry.contract import check_architecture
from deeplense_cli.registry.manager import architectures, get_architecture

EXPECTED = {
    "CvT",
    "CCT",
    "TwinsSVT",
    "LeViT",
    "CaiT",
    "CrossViT",
    "PiT",
    "Swin",
    "T2TViT",
    "CrossFormer",
    "ResNet18",
    "EfficientNet-B0",
    "EfficientNet-B1",
    "EfficientNet-B2",
}
ARCHS = architectures()


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_built_in_architectures_are_registered() -> None:
    names = {arch.name for arch in ARCHS.values()}
    assert names >= EXPECTED, f"missing: {EXPECTED - names}"
    for arch in ARCHS.values():
        if arch.name in EXPECTED:
            assert arch.plugin in {
                "vit_pytorch",
                "timm_swin",
                "torchvision_resnet",
                "timm_efficientnet",
            }
            assert {64, 150} <= set(arch.image_sizes)
            assert arch.description and "\n" not in arch.description


def test_names_are_case_insensitive() -> None:
    assert get_architecture("cct").name == "CCT"
    assert get_architecture("TWINSSVT").name == "TwinsSVT"
    assert get_architecture("resnet18") is not None


def test_unknown_hyperparameter_is_a_clear_error() -> None:
    with pytest.raises(DeepLenseError, match=r"unknown hyper-parameter.*mlp_radio"):
        get_architecture("CCT").build(image_size=64, mlp_radio=2)


def test_unsupported_image_size_is_a_clear_error() -> None:
    with pytest.raises(DeepLenseError, match="does not support 100x100"):
        get_architecture("CCT").build(image_size=100)


@pytest.mark.parametrize("key", sorted(ARCHS))
def test_train_defaults_and_tune_space_are_well_formed(key: str) -> None:
    arch = ARCHS[key]
    assert {"lr", "batch_size", "weight_decay", "warmup_epochs"} <= set(arch.train_defaults)
    assert 0 < arch.train_defaults["lr"] < 1
    assert arch.tune_space, f"{arch.name} has no tune_space"
    for name, spec in arch.tune_space.items():
        if name.startswith("model."):
            assert name[6:] in arch.defaults, f"{arch.name}: {name} is not a hyper-parameter"
        assert spec["type"] in {"choice", "loguniform", "uniform"}, (name, spec)
        if spec["type"] == "choice":
            assert len(spec["values"]) >= 1
        else:
            assert 0 < spec["low"] < spec["high"]
            if name == "lr":
                assert spec["low"] <= arch.train_defaults["lr"] <= spec["high"]


@pytest.mark.parametrize("key", sorted(ARCHS))
def test_contract_at_64(key: str) -> None:
    check_architecture(ARCHS[key], image_sizes=[64])


@pytest.mark.parametrize("key", sorted(ARCHS))
def test_contract_at_150(key: str) -> None:
    if 150 not in ARCHS[key].image_sizes:
        pytest.skip(f"{ARCHS[key].name} does not support 150 px")
    check_architecture(ARCHS[key], image_sizes=[150])


@pytest.mark.parametrize("size", [50, 80, 100])
def test_cvt_at_its_crop_sizes(size: int) -> None:
    # CvT's extra sizes serve data.crop (Model_I cropped to 80 or 100 px, Model_II/III to 50)
    assert size in ARCHS["cvt"].image_sizes
    check_architecture(ARCHS["cvt"], image_sizes=[size])


def _corners(arch: Architecture) -> list[dict[str, Any]]:
    """All first values and all last values of the model.* choices (dropouts included)."""
    space = arch.tune_space
    keys = [k for k in space if k.startswith("model.") and space[k]["type"] == "choice"]
    return [{k[6:]: space[k]["values"][end] for k in keys} for end in (0, -1)]


@pytest.mark.parametrize("key", sorted(ARCHS))
def test_tune_space_corners_build_at_64(key: str) -> None:
    arch = ARCHS[key]
    for hparams in _corners(arch):
        model = arch.build(image_size=64, **hparams).eval()
        with torch.no_grad():
            out = model(torch.rand(2, 1, 64, 64))
        assert out.shape == (2, 3), (arch.name, hparams)
        assert torch.isfinite(out).all(), (arch.name, hparams)


def test_padding_is_lossless_and_centred() -> None:
    """A 150 px model that needs 160 px pads with zeros around the untouched image."""
    model = get_architecture("LeViT").build(image_size=150).eval()
    seen: list[torch.Tensor] = []
    inner = model.get_submodule("model")  # the wrapped LeViT
    hook = inner.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    image = torch.rand(1, 1, 150, 150)
    with torch.no_grad():
        model(image)
    hook.remove()
    padded = seen[0]
    assert padded.shape == (1, 1, 160, 160)
    assert torch.equal(padded[..., 5:155, 5:155], image)
    border = torch.ones_like(padded, dtype=torch.bool)
    border[..., 5:155, 5:155] = False
    assert (padded[border] == 0).all()


def test_cait_is_deterministic_in_eval_but_drops_layers_in_training() -> None:
    model = get_architecture("CaiT").build(image_size=64, layer_dropout=0.5)
    images = torch.rand(2, 1, 64, 64)
    model.eval()
    with torch.no_grad():
        outs = [model(images) for _ in range(6)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        train_outs = [model(images) for _ in range(6)]
    assert any(not torch.equal(train_outs[0], o) for o in train_outs[1:])


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)  # the zero-padding wrapper holds the model


def test_twins_svt_embeds_raw_pixels_without_normalising_each_patch() -> None:
    """Upstream's LayerNorm over each 4x4 pixel patch makes a faint patch look like a bright
    one; the default embedding keeps brightness, the upstream one (patch_norm) loses it."""
    torch.manual_seed(0)
    images = torch.rand(1, 1, 64, 64)
    for norm, scale_invariant in ((False, False), (True, True)):
        embed = _unwrap(get_architecture("TwinsSVT").build(image_size=64, patch_norm=norm))
        embed = embed.layers[0][0].eval()
        with torch.no_grad():
            a, b = embed(images), embed(images * 10)
        # relative: LayerNorm's epsilon leaves ~1e-4 of the output, a 10x brightness ~1
        change = float((a - b).abs().max() / a.abs().max())
        assert (change < 1e-3) is scale_invariant, change


def test_renamed_hyper_parameter_still_reads_old_configs() -> None:
    """TwinsSVT's first_patch_norm is now patch_norm (as on CaiT and CrossViT): runs and
    config files written with the old name build the same model."""
    from deeplense_cli.training.config import resolve

    arch = get_architecture("TwinsSVT")
    torch.manual_seed(0)
    old = _unwrap(arch.build(image_size=64, first_patch_norm=True))
    assert not isinstance(old.layers[0][0].proj[0], nn.Identity)  # upstream's LayerNorm
    assert isinstance(_unwrap(arch.build(image_size=64)).layers[0][0].proj[0], nn.Identity)
    for cfg, overrides in (
        ({"model": {"name": "twinssvt", "params": {"first_patch_norm": True}}}, {}),
        ({"model": {"name": "twinssvt"}}, {"model.first_patch_norm": True}),
        ({"model": {"name": "twinssvt"}}, {"first_patch_norm": True}),
    ):
        params = resolve(cfg, {}, overrides)["model"]["params"]
        assert params["patch_norm"] is True and "first_patch_norm" not in params
    with pytest.raises(DeepLenseError, match="'first_patch_norm' is the old name of 'patch_norm'"):
        arch.build(image_size=64, first_patch_norm=True, patch_norm=False)
    # both names in --set: an error, whichever order or spelling (not "the later one wins")
    name = {"model": {"name": "twinssvt"}}
    for overrides in (
        {"model.first_patch_norm": True, "model.patch_norm": False},
        {"patch_norm": False, "model.first_patch_norm": True},
    ):
        with pytest.raises(
            DeepLenseError, match="'first_patch_norm' is the old name of 'patch_norm'"
        ):
            resolve(name, {}, overrides)
    # agreeing values, and --set overriding a config file's value under the other name, are fine
    assert resolve(name, {}, {"first_patch_norm": True, "patch_norm": True})["model"]["params"][
        "patch_norm"
    ]
    cfg = {"model": {"name": "twinssvt", "params": {"patch_norm": True}}}
    assert not resolve(cfg, {}, {"model.first_patch_norm": False})["model"]["params"]["patch_norm"]


def test_twins_svt_attention_heads_follow_the_stage_width() -> None:
    """head_dim channels per head, emb_dim // head_dim heads (upstream: 8 x 64 everywhere)."""
    model = _unwrap(get_architecture("TwinsSVT").build(image_size=64))
    dims = get_architecture("TwinsSVT").defaults["emb_dims"]
    for stage, dim in enumerate(dims):
        for module in model.layers[stage].modules():
            if hasattr(module, "to_q"):
                assert module.to_q.out_channels == dim and module.heads == max(1, dim // 32)


def test_levit_output_depends_on_the_image_at_initialisation() -> None:
    """vit-pytorch zero-initialises the output BatchNorm of LeViT's downsampling attention
    blocks, which have no residual: every image then gave the same logits until those weights
    moved, and under bf16 autocast they never did (training loss stuck at ln 3)."""
    torch.manual_seed(0)
    for stem_stride in (16, 8):
        model = get_architecture("LeViT").build(image_size=64, stem_stride=stem_stride).eval()
        with torch.no_grad():
            a, b = model(torch.zeros(1, 1, 64, 64)), model(torch.rand(1, 1, 64, 64))
        assert (a - b).abs().max() > 1e-4  # upstream's initialisation: exactly equal


def test_pit_embeddings_start_small() -> None:
    """vit-pytorch draws PiT's position embedding and class token from N(0, 1); they start at
    std 0.02 (truncated at 2 std), as in PiT's own code."""
    torch.manual_seed(0)
    model = _unwrap(get_architecture("PiT").build(image_size=64))
    for param in (model.pos_embedding, model.cls_token):
        assert param.abs().max() <= 0.04 and param.std() > 0.005
    upstream = _unwrap(get_architecture("PiT").build(image_size=64, embedding_init_std=1.0))
    assert upstream.pos_embedding.std() > 0.5


@pytest.mark.parametrize("key", ["cvt", "crossformer", "twinssvt"])
def test_channel_layer_norms_are_fused_but_compute_upstreams_function(key: str) -> None:
    """vit-pytorch's channel LayerNorm (var and mean reductions, five element-wise ops) is
    given one fused layer_norm: same outputs and gradients, same state-dict keys; the ONNX
    export copy goes back to upstream's ops (faster in ONNX Runtime at batch 64)."""
    import copy

    from deeplense_plugins._channels_last import upstream_stages
    from deeplense_plugins._common import restore_channel_norms

    from deeplense_cli.layers.export_forms import export_copy

    torch.manual_seed(0)
    model = get_architecture(key).build(image_size=64)
    upstream_stages(model)  # so that every channel LayerNorm's own forward runs
    fused = [m for m in model.modules() if hasattr(type(m), "export_as")]
    assert fused and all(type(m).__name__ == "LayerNorm" for m in fused)
    upstream = copy.deepcopy(model)
    assert restore_channel_norms(upstream) == len(fused)
    assert not any(hasattr(type(m), "export_as") for m in upstream.modules())
    assert list(model.state_dict()) == list(upstream.state_dict())
    x = torch.randn(3, 1, 64, 64)
    outs = []
    for m in (model, upstream):
        m.zero_grad()
        out = m(x)
        out.square().sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    (a, grads_a), (b, grads_b) = outs
    assert torch.allclose(a, b, atol=1e-5) and len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-4, rtol=1e-3)
    exported, replaced = export_copy(model)
    assert replaced >= len(fused) and exported is not model
    assert not any(hasattr(type(m), "export_as") for m in exported.modules())
    assert any(hasattr(type(m), "export_as") for m in model.modules())  # the original kept


@pytest.mark.parametrize("key, layers", [("crossvit", 28), ("pit", 10), ("t2tvit", 8), ("cct", 6)])
def test_attention_layers_train_as_upstream_and_export_fused(key: str, layers: int) -> None:
    """CrossViT's, PiT's, T2TViT's and CCT's attention layers keep upstream's forward for
    training (only ``export_as`` is added); the export copy's fused forms (split projections,
    one multi_head_attention call) compute the same function from the same parameters."""
    import copy

    from deeplense_cli.layers.export_forms import export_copy

    torch.manual_seed(0)
    model = get_architecture(key).build(image_size=64).eval()
    marked = [m for m in model.modules() if type(m).__module__ == "deeplense_plugins._attention"]
    assert len(marked) == layers
    for m in marked:
        upstream = type(m).__mro__[1]
        assert (
            upstream.__module__.startswith("vit_pytorch.") and type(m).forward is upstream.forward
        )
        assert set(vars(type(m))) <= {"export_as", "__module__", "__qualname__", "__doc__"}
    keys = list(model.state_dict())
    exported, _ = export_copy(model)
    fused = [m for m in exported.modules() if type(m).__name__.startswith("FusedAttention")]
    assert len(fused) == layers and list(exported.state_dict()) == keys
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m).__module__ == "deeplense_plugins._attention":
            m.__class__ = type(m).__mro__[1]
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        a, b, c = model(x), exported(x), plain(x)
    assert a.abs().max() > 0.01 and torch.equal(a, c)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def _forward_backward(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("key", ["crossformer", "cvt", "twinssvt"])
def test_channels_last_stages_compute_upstreams_function(key: str) -> None:
    """CrossFormer's and TwinsSVT's transformer stages run on (B, H, W, C) tokens with
    matrix products instead of upstream's 1x1 convolutions on (B, C, H, W) maps: the same
    outputs and gradients from the same parameters (and state-dict keys)."""
    import copy

    from deeplense_plugins._channels_last import upstream_stages

    torch.manual_seed(0)
    model = get_architecture(key).build(image_size=64)
    with torch.no_grad():  # LayerNorm gains and biases away from 1 and 0
        for name, p in model.named_parameters():
            if name.endswith((".g", ".b")):
                p.add_(torch.randn_like(p) * 0.3)
    upstream = copy.deepcopy(model)
    changed = upstream_stages(upstream)
    assert changed >= 2 and upstream_stages(upstream) == 0
    assert list(model.state_dict()) == list(upstream.state_dict())
    stage = next(m for m in model.modules() if type(m).__name__.startswith("ChannelsLast"))
    assert type(stage).__module__ == "deeplense_plugins._channels_last"
    x = torch.randn(3, 1, 64, 64)
    (a, grads_a), (b, grads_b) = (_forward_backward(m, x) for m in (model, upstream))
    assert a.abs().max() > 0.1 and torch.allclose(a, b, atol=1e-5)
    assert len(grads_a) == len(grads_b) == len(list(model.parameters()))
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-3)
    # ONNX export keeps the channels-last stages, except CvT's (ORT runs upstream's faster)
    from deeplense_cli.layers.export_forms import export_copy

    exported, _ = export_copy(model)
    kinds = {type(m).__module__ for m in exported.modules() if "Transformer" in type(m).__name__}
    assert kinds == ({"vit_pytorch.cvt"} if key == "cvt" else {"deeplense_plugins._channels_last"})


def test_cpu_bf16_fixups_run_strided_depthwise_convs_in_float32() -> None:
    """oneDNN's bf16 strided depthwise convolutions are slow on CPUs without AMX; under CPU
    autocast they run in float32 (output float32, the float32 result), nothing else moves."""
    from deeplense_cli.core.device import cpu_bf16_fixups

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),  # dense: stays
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise, stride 1: stays (fast in bf16)
        nn.Conv2d(8, 16, 3, padding=1, stride=2, groups=8),  # strided grouped: float32
    )
    keys = list(model.state_dict())
    assert cpu_bf16_fixups(model) == 1
    assert [type(m) is nn.Conv2d for m in model] == [True, True, False]
    assert isinstance(model[2], nn.Conv2d) and list(model.state_dict()) == keys
    x = torch.randn(2, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model[1](model[0](x))
        out = model[2](h)
    assert h.dtype == torch.bfloat16 and out.dtype == torch.float32
    expected = nn.functional.conv2d(h.float(), model[2].weight, model[2].bias, 2, 1, 1, 8)
    assert torch.equal(out, expected)
    assert model[2](x.new_ones(1, 8, 8, 8)).dtype == torch.float32  # no autocast: as before
    cvt = get_architecture("CvT").build(image_size=64)
    assert cpu_bf16_fixups(cvt) == 4  # the key/value projections (stride 2)


# --- the contract check must catch broken architectures --------------------------------


class _Tiny(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(img).mean(dim=(2, 3)))


class _EvalDropout(_Tiny):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(super().forward(img), 0.5, training=True)


class _WrongShape(_Tiny):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return super().forward(img)[:, :1]


class _HiddenState(_Tiny):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__(num_classes, in_channels)
        self.offset = torch.randn(num_classes)  # not a buffer: lost by state_dict

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return super().forward(img) + self.offset


class _Frozen(_Tiny):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__(num_classes, in_channels)
        self.requires_grad_(False)
        self.fc.weight.requires_grad_(True)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return super().forward(img).detach() + 0 * self.fc.weight.sum()


def _arch(cls: type[_Tiny]) -> Architecture:
    def factory(*, image_size: int, num_classes: int, in_channels: int) -> nn.Module:
        return cls(num_classes, in_channels)

    return Architecture(name=cls.__name__.strip("_"), factory=factory, image_sizes=(64,))


def test_contract_accepts_a_good_model() -> None:
    check_architecture(_arch(_Tiny))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_EvalDropout, "two eval-mode forward passes differ"),
        (_WrongShape, r"output shape \(2, 1\), expected \(2, 3\)"),
        (_HiddenState, "fresh model loaded with the state_dict gives different outputs"),
        (_Frozen, "changed no weights"),
    ],
)
def test_contract_rejects_a_broken_model(cls: type[_Tiny], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_architecture(_arch(cls))


def test_contract_rejects_a_size_the_architecture_does_not_support() -> None:
    with pytest.raises(AssertionError, match="not among its image_sizes"):
        check_architecture(_arch(_Tiny), image_sizes=[150])


@pytest.mark.parametrize("key", sorted(ARCHS))
def test_defaults_survive_a_json_round_trip(key: str) -> None:
    """Configs from YAML/JSON turn tuples into lists; every factory must accept them."""
    arch = ARCHS[key]
    hparams = json.loads(json.dumps(dict(arch.defaults)))
    model = arch.build(image_size=64, **hparams).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_padded_model_exports_to_onnx_with_a_constant_pad(tmp_path: Any) -> None:
    """The zero-padding wrapper is a constant ONNX Pad; ONNX Runtime matches PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model = get_architecture("CaiT").build(image_size=150).eval()  # padded to 152, layer drop
    path = tmp_path / "cait.onnx"
    torch.onnx.export(
        model,
        (torch.rand(2, 1, 150, 150),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["img"],
        dynamic_axes={"img": {0: "batch"}},
    )
    graph = onnx.load(str(path)).graph
    pads = [node for node in graph.node if node.op_type == "Pad"]
    assert pads, "no Pad node in the exported graph"
    producer = {out: node for node in graph.node for out in node.output}

    def depends_on_input(name: str) -> bool:
        node = producer.get(name)
        return name == "img" or (node is not None and any(map(depends_on_input, node.input)))

    # the pad amounts are computed from constants only, never from the input's shape
    assert not any(depends_on_input(node.input[1]) for node in pads)
    images = torch.rand(3, 1, 150, 150)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"img": images.numpy()})
    with torch.no_grad():
        torch_out = model(images).numpy()
    assert abs(onnx_out - torch_out).max() < 1e-4
