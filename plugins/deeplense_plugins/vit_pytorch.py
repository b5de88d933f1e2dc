"""Nine vision transformers from vit-pytorch (1.26.x), adapted to one-channel lensing images.

Every model takes ``(B, in_channels, S, S)`` at S = 64 or 150 without resampling. Where an
architecture's patches or windows do not divide 150, the model zero-pads the image to the
next size that fits (see ``_common.pad_to``). Defaults start from the 2022 reference
configurations, with patch and window sizes scaled down for 64 px images.

vit-pytorch quirks handled here: CvT's 2-stage reference configuration (upstream has
three stages); TwinsSVT, LeViT and CaiT hard-code 3 input channels (their first layer is
replaced); CaiT drops layers in eval mode too (fixed); CCT ignores unknown keyword
arguments (only known ones are passed).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import deeplense_cli
from deeplense_cli import Architecture, DeepLenseError
from deeplense_plugins._common import (
    as_tuple,
    choice,
    conv_out,
    fast_channel_norms,
    fitting_size,
    pad_to,
    train_defaults,
    training_space,
)

# --- CvT -------------------------------------------------------------------------------


def build_cvt(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    s1_emb_dim: int,
    s1_heads: int,
    s1_depth: int,
    s1_mlp_mult: int,
    s2_emb_dim: int,
    s2_heads: int,
    s2_depth: int,
    s2_mlp_mult: int,
    dropout: float,
) -> Any:
    """CvT with the reference's two stages (a conv stride-4 stage, then a stride-2 stage)."""
    import torch.nn as nn
    from vit_pytorch import cvt
    from vit_pytorch.cvt import CvT

    model = CvT(
        num_classes=num_classes,
        channels=in_channels,
        s1_emb_dim=s1_emb_dim,
        s1_heads=s1_heads,
        s1_depth=s1_depth,
        s1_mlp_mult=s1_mlp_mult,
        s2_emb_dim=s2_emb_dim,
        s2_heads=s2_heads,
        s2_depth=s2_depth,
        s2_mlp_mult=s2_mlp_mult,
        s3_emb_dim=8,  # a placeholder third stage, dropped below
        s3_depth=0,
        dropout=dropout,
    )
    # Upstream CvT always has three stages; keep the first two and re-size the head.
    model.layers = model.layers[:2]
    model.to_logits[-1] = nn.Linear(s2_emb_dim, num_classes)
    fast_channel_norms(model, cvt)
    from deeplense_plugins._channels_last import channels_last_stages

    channels_last_stages(model, "cvt")  # the same function, faster (see the module)
    return model


CVT = Architecture(
    name="CvT",
    factory=build_cvt,
    defaults={
        "s1_emb_dim": 64,
        "s1_heads": 2,
        "s1_depth": 2,
        "s1_mlp_mult": 4,
        "s2_emb_dim": 128,
        "s2_heads": 3,
        "s2_depth": 2,
        "s2_mlp_mult": 4,
        "dropout": 0.0,
    },
    description="Convolutional vision transformer (2 stages, conv token embedding and projections)",
    # all convolutions and a global pool, so any size; the centre crops (data.crop) that
    # keep a lens's ring (Model_I's reaches ~40 px from the centre: 80 px) and the published ones
    image_sizes=(50, 64, 80, 100, 150),
    train_defaults=train_defaults(5e-4),
    tune_space={
        **training_space((1e-5, 2e-3)),
        "model.s1_depth": choice([1, 2]),
        "model.s2_depth": choice([1, 2, 4]),
        "model.s2_heads": choice([2, 3, 4]),
        "model.s2_emb_dim": choice([96, 128, 192]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- CCT -------------------------------------------------------------------------------


def build_cct(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    embedding_dim: int,
    n_conv_layers: int,
    kernel_size: int,
    stride: int,
    padding: int,
    pooling_kernel_size: int,
    pooling_stride: int,
    pooling_padding: int,
    num_layers: int,
    num_heads: int,
    mlp_ratio: float,
    positional_embedding: str,
    dropout_rate: float,
    attention_dropout: float,
    stochastic_depth_rate: float,
) -> Any:
    """Compact convolutional transformer; every argument is spelt out because CCT
    silently ignores unknown keyword arguments."""
    from vit_pytorch.cct import CCT

    if embedding_dim % num_heads:
        raise DeepLenseError(
            f"CCT embedding_dim {embedding_dim} must be divisible by num_heads {num_heads}"
        )
    model = CCT(
        img_size=image_size,
        n_input_channels=in_channels,
        num_classes=num_classes,
        embedding_dim=embedding_dim,
        n_conv_layers=n_conv_layers,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        pooling_kernel_size=pooling_kernel_size,
        pooling_stride=pooling_stride,
        pooling_padding=pooling_padding,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        positional_embedding=positional_embedding,
        dropout_rate=dropout_rate,
        attention_dropout=attention_dropout,
        stochastic_depth_rate=stochastic_depth_rate,
    )
    from deeplense_plugins._attention import fused_attention_exports

    fused_attention_exports(model, "cct")  # exported with fused attention (see the module)
    return model


CCT = Architecture(
    name="CCT",
    factory=build_cct,
    defaults={
        "embedding_dim": 256,
        "n_conv_layers": 2,
        "kernel_size": 7,
        "stride": 2,
        "padding": 3,
        "pooling_kernel_size": 3,
        "pooling_stride": 2,
        "pooling_padding": 1,
        "num_layers": 6,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "positional_embedding": "learnable",
        "dropout_rate": 0.0,
        "attention_dropout": 0.1,
        "stochastic_depth_rate": 0.1,
    },
    description="Compact convolutional transformer (conv tokenizer, sequence pooling)",
    train_defaults=train_defaults(5e-4),
    tune_space={
        **training_space((1e-5, 2e-3)),
        "model.num_layers": choice([4, 6, 8]),
        "model.num_heads": choice([2, 4, 8]),
        "model.embedding_dim": choice([128, 256]),
        "model.mlp_ratio": choice([1.0, 2.0, 3.0]),
        "model.dropout_rate": choice([0.0, 0.1]),
    },
)

# --- TwinsSVT --------------------------------------------------------------------------


def build_twins_svt(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    emb_dims: Any,
    patch_sizes: Any,
    local_patch_sizes: Any,
    global_ks: Any,
    depths: Any,
    peg_kernel_size: int,
    dropout: float,
    head_dim: int,
    patch_norm: bool,
) -> Any:
    """Twins-SVT (4 stages of locally-grouped and global sub-sampled attention).

    Two departures from vit-pytorch, both towards the Twins paper: attention heads of
    ``head_dim`` channels, ``emb_dim // head_dim`` per stage (upstream hard-codes 8 heads of 64
    at every stage: 512 channels of queries, keys and values even where the stage has 32, which
    made it the slowest model here), and, unless ``patch_norm``, no LayerNorm over each
    raw 4x4 pixel patch (upstream's per-patch normalisation gives an empty-sky patch the same
    contrast as the lensed arc).
    """
    import torch.nn as nn
    from vit_pytorch import twins_svt
    from vit_pytorch.twins_svt import GlobalAttention, LocalAttention, PatchEmbedding, TwinsSVT

    dims = as_tuple(emb_dims, "emb_dims", 4)
    patches = as_tuple(patch_sizes, "patch_sizes", 4)
    local = as_tuple(local_patch_sizes, "local_patch_sizes", 4)
    global_k = as_tuple(global_ks, "global_ks", 4)
    depth = as_tuple(depths, "depths", 4)

    def fits(size: int) -> bool:
        for i in range(4):
            if size % patches[i]:
                return False
            size //= patches[i]
            # the last stage has no local attention; global attention only needs k <= size
            if (i < 3 and size % local[i]) or global_k[i] > size:
                return False
        return True

    target = fitting_size(image_size, fits, f"TwinsSVT patches {patches} / windows {local}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "peg_kernel_size": peg_kernel_size}
    for i in range(4):
        kwargs.update(
            {
                f"s{i + 1}_emb_dim": dims[i],
                f"s{i + 1}_patch_size": patches[i],
                f"s{i + 1}_local_patch_size": local[i],
                f"s{i + 1}_global_k": global_k[i],
                f"s{i + 1}_depth": depth[i],
            }
        )
    model = TwinsSVT(dropout=dropout, **kwargs)
    # Upstream hard-codes 3 input channels in the first patch embedding.
    embed = PatchEmbedding(dim=in_channels, dim_out=dims[0], patch_size=patches[0])
    if not patch_norm:
        embed.proj[0] = nn.Identity()
    model.layers[0][0] = embed
    for stage in range(4):
        heads = max(1, dims[stage] // head_dim)
        for transformer in (model.layers[stage][1], model.layers[stage][3]):
            for layer in transformer.layers:
                local, _, global_, _ = layer
                if not isinstance(local, nn.Identity):  # the last stage has no local attention
                    local.fn = LocalAttention(
                        dims[stage], heads, head_dim, dropout, patch_size=local.fn.patch_size
                    )
                global_.fn = GlobalAttention(
                    dims[stage], heads, head_dim, dropout, k=global_k[stage]
                )
    fast_channel_norms(model, twins_svt)
    from deeplense_plugins._channels_last import channels_last_stages

    channels_last_stages(model, "twins_svt")  # the same function, faster (see the module)
    return pad_to(model, image_size, target)


TWINS_SVT = Architecture(
    name="TwinsSVT",
    factory=build_twins_svt,
    defaults={
        "emb_dims": (32, 64, 128, 256),
        "patch_sizes": (4, 2, 2, 2),
        "local_patch_sizes": (4, 4, 2, 1),
        "global_ks": (4, 2, 2, 1),
        "depths": (1, 2, 3, 1),
        "peg_kernel_size": 3,
        "dropout": 0.0,
        "head_dim": 32,
        "patch_norm": False,
    },
    # called first_patch_norm before CaiT and CrossViT got the same switch
    renamed_params={"first_patch_norm": "patch_norm"},
    description="Twins-SVT: spatially separable (local + global) attention in 4 stages",
    # Higher learning rates left the training loss at chance (BENCHMARKS.md, 'Inputs,
    # BatchNorm and per-architecture defaults').
    train_defaults=train_defaults(1e-4),
    tune_space={
        **training_space((1e-5, 3e-4)),
        "model.depths": choice([(1, 1, 1, 1), (1, 2, 3, 1)]),
        "model.emb_dims": choice([(32, 64, 128, 256), (64, 128, 256, 512)]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- LeViT -----------------------------------------------------------------------------


def build_levit(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    dim: Any,
    depth: int,
    heads: Any,
    mlp_mult: int,
    dim_key: int,
    dim_value: int,
    dropout: float,
    stem_stride: int,
) -> Any:
    """LeViT: a stride-2 conv stem, then 3 attention stages with attention downsampling.

    ``stem_stride`` 16 is upstream's four-conv stem (64 px -> 4x4, 2x2, 1x1 maps);
    8 drops the last stem conv (64 px -> 8x8, 4x4, 2x2), keeping BatchNorm statistics
    over more than one position per image in the last stage.
    """
    import torch.nn as nn
    from vit_pytorch.levit import LeViT

    if stem_stride not in (8, 16):
        raise DeepLenseError(f"LeViT stem_stride must be 8 or 16, got {stem_stride}")
    dims = as_tuple(dim, "dim", 3)
    # The stride-2 stem convolutions must give image_size // stem_stride exactly.
    target = fitting_size(
        image_size, lambda s: s % stem_stride == 0, f"LeViT's /{stem_stride} conv stem"
    )
    model = LeViT(
        # upstream sizes its attention-bias tables for image_size // 16
        image_size=target * 16 // stem_stride,
        num_classes=num_classes,
        dim=dims,
        depth=depth,
        heads=as_tuple(heads, "heads", 3),
        mlp_mult=mlp_mult,
        stages=3,
        dim_key=dim_key,
        dim_value=dim_value,
        dropout=dropout,
    )
    # Upstream hard-codes 3 input channels in the first stem convolution.
    model.conv_embedding[0] = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1)
    if stem_stride == 8:
        model.conv_embedding[2] = nn.Conv2d(64, dims[0], 3, stride=2, padding=1)
        model.conv_embedding = model.conv_embedding[:3]
    # Upstream zero-initialises the output BatchNorm of every attention block: the identity in a
    # residual block, but in the two downsampling blocks (no residual) it makes the output
    # independent of the image at initialisation. LeViT's own code initialises them to 1.
    for block in model.backbone:
        if not block.attn_residual:
            for attention, _ in block.layers:
                nn.init.ones_(attention.to_out[2].weight)
    return pad_to(model, image_size, target)


LEVIT = Architecture(
    name="LeViT",
    factory=build_levit,
    defaults={
        "dim": (64, 128, 128),
        "depth": 5,
        "heads": (2, 4, 5),
        "mlp_mult": 2,
        "dim_key": 32,
        "dim_value": 64,
        "dropout": 0.0,
        "stem_stride": 16,
    },
    description="LeViT: convolutional stem and attention stages with downsampling attention",
    train_defaults=train_defaults(5e-4),
    tune_space={
        **training_space((1e-5, 2e-3)),
        "model.depth": choice([2, 3, 5]),
        "model.mlp_mult": choice([2, 4]),
        "model.stem_stride": choice([8, 16]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- CaiT ------------------------------------------------------------------------------


@functools.cache
def _cait_transformer() -> type:
    """CaiT's Transformer with layer dropout applied in training mode only.

    Upstream drops random layers in eval mode too, so inference is not deterministic and the
    dynamo ONNX exporter fails.
    """
    from vit_pytorch import cait

    class TrainOnlyLayerDropTransformer(cait.Transformer):
        def forward(self, x: Any, context: Any = None) -> Any:
            layers = self.layers
            if self.training:
                layers = cait.dropout_layers(layers, dropout=self.layer_dropout)
            for attn, ff in layers:
                x = attn(x, context=context) + x
                x = ff(x) + x
            return x

    return TrainOnlyLayerDropTransformer


def build_cait(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    patch_size: int,
    dim: int,
    depth: int,
    cls_depth: int,
    heads: int,
    mlp_dim: int,
    dim_head: int,
    dropout: float,
    emb_dropout: float,
    layer_dropout: float,
    patch_norm: bool,
) -> Any:
    """CaiT (class-attention in image transformers), deterministic in eval mode.

    ``patch_norm``: upstream's LayerNorm over each raw pixel patch before the linear
    embedding (it gives an empty-sky patch the lensed arc's contrast).
    """
    import torch.nn as nn
    from vit_pytorch.cait import CaiT

    target = fitting_size(image_size, lambda s: s % patch_size == 0, f"CaiT patch {patch_size}")
    model = CaiT(
        image_size=target,
        patch_size=patch_size,
        num_classes=num_classes,
        dim=dim,
        depth=depth,
        cls_depth=cls_depth,
        heads=heads,
        mlp_dim=mlp_dim,
        dim_head=dim_head,
        dropout=dropout,
        emb_dropout=emb_dropout,
        layer_dropout=layer_dropout,
    )
    # Upstream's patch embedding assumes 3 channels: LayerNorm + Linear over 3 * p * p.
    patch_dim = in_channels * patch_size**2
    model.to_patch_embedding[1] = nn.LayerNorm(patch_dim) if patch_norm else nn.Identity()
    model.to_patch_embedding[2] = nn.Linear(patch_dim, dim)
    for transformer in (model.patch_transformer, model.cls_transformer):
        transformer.__class__ = _cait_transformer()
    return pad_to(model, image_size, target)


CAIT = Architecture(
    name="CaiT",
    factory=build_cait,
    defaults={
        "patch_size": 8,
        "dim": 256,
        # Depth 4 and 4 heads (not 6 and 6): cheaper steps, as accurate in the CPU budget (these
        # and the settings below: BENCHMARKS.md, 'Inputs, BatchNorm and per-architecture defaults').
        "depth": 4,
        "cls_depth": 2,
        "heads": 4,
        "mlp_dim": 256,
        "dim_head": 64,
        # No dropout by default: it made CPU steps dearer and the training loss fall more slowly.
        "dropout": 0.0,
        "emb_dropout": 0.0,
        "layer_dropout": 0.0,
        # No LayerNorm over each raw pixel patch: with standardised inputs it tested worse.
        "patch_norm": False,
    },
    description="CaiT: ViT with LayerScale and class-attention layers (eval-deterministic)",
    train_defaults=train_defaults(2e-4),
    tune_space={
        **training_space((1e-5, 5e-4)),
        "model.depth": choice([4, 6, 8]),
        "model.heads": choice([4, 6, 8]),
        "model.dim": choice([128, 256]),
        "model.layer_dropout": choice([0.0, 0.05, 0.1]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- CrossViT --------------------------------------------------------------------------


def build_cross_vit(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    sm_dim: int,
    sm_patch_size: int,
    sm_enc_depth: int,
    sm_enc_heads: int,
    sm_enc_mlp_dim: int,
    lg_dim: int,
    lg_patch_size: int,
    lg_enc_depth: int,
    lg_enc_heads: int,
    lg_enc_mlp_dim: int,
    depth: int,
    cross_attn_depth: int,
    cross_attn_heads: int,
    dropout: float,
    emb_dropout: float,
    patch_norm: bool,
) -> Any:
    """CrossViT: a small-patch and a large-patch branch exchanging class tokens.

    ``patch_norm``: upstream's LayerNorm over each raw pixel patch in both branches' embeddings.
    """
    import torch.nn as nn
    from vit_pytorch.cross_vit import CrossViT

    step = math.lcm(sm_patch_size, lg_patch_size)
    target = fitting_size(
        image_size, lambda s: s % step == 0, f"CrossViT patches {sm_patch_size}/{lg_patch_size}"
    )
    model = CrossViT(
        image_size=target,
        num_classes=num_classes,
        channels=in_channels,
        sm_dim=sm_dim,
        sm_patch_size=sm_patch_size,
        sm_enc_depth=sm_enc_depth,
        sm_enc_heads=sm_enc_heads,
        sm_enc_mlp_dim=sm_enc_mlp_dim,
        lg_dim=lg_dim,
        lg_patch_size=lg_patch_size,
        lg_enc_depth=lg_enc_depth,
        lg_enc_heads=lg_enc_heads,
        lg_enc_mlp_dim=lg_enc_mlp_dim,
        depth=depth,
        cross_attn_depth=cross_attn_depth,
        cross_attn_heads=cross_attn_heads,
        dropout=dropout,
        emb_dropout=emb_dropout,
    )
    if not patch_norm:
        for embedder in (model.sm_image_embedder, model.lg_image_embedder):
            embedder.to_patch_embedding[1] = nn.Identity()
    from deeplense_plugins._attention import fused_attention_exports

    fused_attention_exports(model, "cross_vit")  # exported with fused attention (see the module)
    return pad_to(model, image_size, target)


CROSS_VIT = Architecture(
    name="CrossViT",
    factory=build_cross_vit,
    defaults={
        "sm_dim": 128,
        "sm_patch_size": 8,
        "sm_enc_depth": 1,
        "sm_enc_heads": 4,
        "sm_enc_mlp_dim": 256,
        "lg_dim": 64,
        "lg_patch_size": 16,
        "lg_enc_depth": 2,
        "lg_enc_heads": 4,
        "lg_enc_mlp_dim": 128,
        "depth": 4,
        "cross_attn_depth": 2,
        "cross_attn_heads": 4,
        # No dropout by default: it made CPU steps dearer and the training loss fall more slowly
        # (this and below: BENCHMARKS.md, 'Inputs, BatchNorm and per-architecture defaults').
        "dropout": 0.0,
        "emb_dropout": 0.0,
        # Upstream's per-patch LayerNorm kept: leaving it out made no difference.
        "patch_norm": True,
    },
    description="CrossViT: dual-branch (8 px and 16 px patches) ViT with cross-attention",
    # 5e-4, not 2e-4: with standardised inputs it learned faster and tested better.
    train_defaults=train_defaults(5e-4),
    tune_space={
        **training_space((1e-5, 5e-4)),
        "model.depth": choice([2, 3, 4]),
        "model.cross_attn_depth": choice([1, 2]),
        "model.sm_enc_heads": choice([2, 4, 8]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- PiT -------------------------------------------------------------------------------


def build_pit(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    patch_size: int,
    dim: int,
    depth: Any,
    heads: Any,
    mlp_dim: int,
    dim_head: int,
    dropout: float,
    emb_dropout: float,
    embedding_init_std: float,
) -> Any:
    """Pooling-based ViT: token grids halved by depth-wise convolutions between stages.

    The position embedding and class token start from N(0, ``embedding_init_std``) truncated
    at 2 std, as in PiT's own code (0.02); vit-pytorch draws them from N(0, 1) (1.0 here).
    """
    import torch.nn as nn
    from vit_pytorch.pit import PiT

    target = fitting_size(image_size, lambda s: s % patch_size == 0, f"PiT patch {patch_size}")
    model = PiT(
        image_size=target,
        patch_size=patch_size,
        num_classes=num_classes,
        channels=in_channels,
        dim=dim,
        depth=as_tuple(depth, "depth"),
        heads=as_tuple(heads, "heads", len(as_tuple(depth, "depth"))),
        mlp_dim=mlp_dim,
        dim_head=dim_head,
        dropout=dropout,
        emb_dropout=emb_dropout,
    )
    for param in (model.pos_embedding, model.cls_token):
        nn.init.trunc_normal_(
            param, std=embedding_init_std, a=-2 * embedding_init_std, b=2 * embedding_init_std
        )
    from deeplense_plugins._attention import fused_attention_exports

    fused_attention_exports(model, "pit")  # exported with fused attention (see the module)
    return pad_to(model, image_size, target)


PIT = Architecture(
    name="PiT",
    factory=build_pit,
    defaults={
        "patch_size": 8,
        # PiT-Ti's shape (the paper's smallest), for steps cheap enough for the CPU budget:
        # widths 64/128/256, heads of 32 channels (BENCHMARKS.md, 'Inputs, BatchNorm and
        # per-architecture defaults').
        "dim": 64,
        "depth": (3, 3, 4),
        "heads": (2, 4, 8),
        "mlp_dim": 256,
        "dim_head": 32,
        "dropout": 0.0,
        "emb_dropout": 0.0,
        "embedding_init_std": 0.02,
    },
    description="PiT: pooling-based vision transformer (3 stages, overlapping 8 px patches)",
    train_defaults=train_defaults(1e-4),
    tune_space={
        **training_space((1e-5, 5e-4)),
        "model.depth": choice([(2, 2, 2), (3, 3, 4)]),
        "model.heads": choice([(2, 4, 8), (1, 2, 4)]),
        "model.dim": choice([64, 128]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- T2TViT ----------------------------------------------------------------------------


def build_t2t_vit(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_dim: int,
    dim_head: int,
    t2t_layers: Any,
    dropout: float,
    emb_dropout: float,
) -> Any:
    """Tokens-to-token ViT: soft-split (unfold) token aggregation, then a ViT."""
    from vit_pytorch.t2t import T2TViT

    layers = tuple(tuple(layer) for layer in as_tuple(t2t_layers, "t2t_layers"))
    model = T2TViT(
        image_size=image_size,
        num_classes=num_classes,
        channels=in_channels,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        dim_head=dim_head,
        t2t_layers=layers,
        dropout=dropout,
        emb_dropout=emb_dropout,
    )
    from deeplense_plugins._attention import fused_attention_exports

    fused_attention_exports(model, "vit")  # exported with fused attention (see the module)
    return model


T2T_VIT = Architecture(
    name="T2TViT",
    factory=build_t2t_vit,
    defaults={
        "dim": 256,
        "depth": 6,
        "heads": 5,
        "mlp_dim": 256,
        "dim_head": 64,
        "t2t_layers": ((7, 4), (3, 2), (3, 2)),
        "dropout": 0.0,
        "emb_dropout": 0.0,
    },
    description="Tokens-to-token ViT: progressive soft-split tokenisation, then a ViT",
    train_defaults=train_defaults(5e-4),
    tune_space={
        **training_space((1e-5, 2e-3)),
        "model.depth": choice([4, 6, 8]),
        "model.heads": choice([4, 5, 8]),
        "model.dim": choice([128, 256]),
        "model.dropout": choice([0.0, 0.1]),
    },
)

# --- CrossFormer -----------------------------------------------------------------------


def build_crossformer(
    *,
    image_size: int,
    num_classes: int,
    in_channels: int,
    dim: Any,
    depth: Any,
    local_window_size: Any,
    global_window_size: Any,
    cross_embed_kernel_sizes: Any,
    cross_embed_strides: Any,
    attn_dropout: float,
    ff_dropout: float,
) -> Any:
    """CrossFormer: cross-scale embeddings with alternating short/long-distance attention."""
    from vit_pytorch import crossformer
    from vit_pytorch.crossformer import CrossFormer

    local = as_tuple(local_window_size, "local_window_size", 4)
    glob = as_tuple(global_window_size, "global_window_size", 4)
    kernels = tuple(tuple(k) for k in as_tuple(cross_embed_kernel_sizes, "kernel sizes", 4))
    strides = as_tuple(cross_embed_strides, "cross_embed_strides", 4)

    def fits(size: int) -> bool:
        for i in range(4):
            # every kernel of a cross-embedding layer must give the same map size
            outs = {conv_out(size, k, strides[i], (k - strides[i]) // 2) for k in kernels[i]}
            if len(outs) != 1:
                return False
            size = outs.pop()
            if size < 1 or size % local[i] or size % glob[i]:
                return False
        return True

    target = fitting_size(image_size, fits, f"CrossFormer windows {local} / {glob}", slack=128)
    model = CrossFormer(
        num_classes=num_classes,
        channels=in_channels,
        dim=as_tuple(dim, "dim", 4),
        depth=as_tuple(depth, "depth", 4),
        local_window_size=local,
        global_window_size=glob,
        cross_embed_kernel_sizes=kernels,
        cross_embed_strides=strides,
        attn_dropout=attn_dropout,
        ff_dropout=ff_dropout,
    )
    fast_channel_norms(model, crossformer)
    from deeplense_plugins._channels_last import channels_last_stages

    channels_last_stages(model, "crossformer")  # the same function, faster (see the module)
    return pad_to(model, image_size, target)


CROSSFORMER = Architecture(
    name="CrossFormer",
    factory=build_crossformer,
    defaults={
        "dim": (32, 64, 128, 256),
        "depth": (2, 2, 4, 2),
        "local_window_size": (4, 4, 2, 2),
        "global_window_size": (4, 2, 2, 1),
        "cross_embed_kernel_sizes": ((4, 8, 16, 32), (2, 4), (2, 4), (2, 4)),
        "cross_embed_strides": (4, 2, 2, 2),
        "attn_dropout": 0.0,
        "ff_dropout": 0.0,
    },
    description="CrossFormer: cross-scale embedding, short- and long-distance window attention",
    train_defaults=train_defaults(5e-4),
    tune_space={
        **training_space((1e-5, 2e-3)),
        "model.depth": choice([(2, 2, 2, 2), (2, 2, 4, 2)]),
        "model.dim": choice([(32, 64, 128, 256), (64, 128, 256, 512)]),
        "model.ff_dropout": choice([0.0, 0.1]),
        "model.attn_dropout": choice([0.0, 0.1]),
    },
)

ARCHITECTURES = (CVT, CCT, TWINS_SVT, LEVIT, CAIT, CROSS_VIT, PIT, T2T_VIT, CROSSFORMER)


@deeplense_cli.hookimpl
def register_architectures(register: Any) -> None:
    for arch in ARCHITECTURES:
        register(arch)
