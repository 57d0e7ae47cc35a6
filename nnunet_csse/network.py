"""CSSE U-Net: nnU-Net's PlainConvUNet / ResidualEncoderUNet with UAFS blocks and PDCR embeddings.

The network reuses the modules nnU-Net's ``get_network_from_plans`` builds (same state-dict keys) and adds UAFS
blocks and the cross-layer projection heads. In training mode with ``return_hidden`` set, ``forward`` returns
``SegmentationWithHidden``: nnU-Net's output plus the ``PDCREmbeddings`` the loss reads (anchors and their grid),
so DDP and torch.compile see one ordinary forward. Otherwise the output is exactly nnU-Net's. docs/method.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_csse.config import CSSEConfig
from nnunet_csse.method.anchors import AnchorLayer, InputGrid
from nnunet_csse.method.pdcr import PDCREmbeddings
from nnunet_csse.method.receptive_field import ExactField, module_geometry
from nnunet_csse.method.uafs import UAFSBlock

SUPPORTED_ARCHITECTURES = (PlainConvUNet, ResidualEncoderUNet)


class SegmentationWithHidden(NamedTuple):
    """Training output of ``CSSEUNet`` with ``return_hidden``: what nnU-Net's U-Net returns (a list of logits per
    deep-supervision scale, or one logits tensor) and the PDCR embeddings of the step."""

    segmentation: list[torch.Tensor] | torch.Tensor
    hidden: PDCREmbeddings


def unsupported_architecture_message(arch_class_name: str) -> str:
    return (
        f"nnunet-csse supports the network classes PlainConvUNet and ResidualEncoderUNet of "
        f"dynamic_network_architectures (nnU-Net's default and ResEnc plans); this plan's configuration uses "
        f"'{arch_class_name}'. Plan the dataset with nnU-Net's default planner or nnUNetPlannerResEnc(M/L/XL), "
        f"or train this plan with a non-CSSE trainer."
    )


def check_supported_architecture(arch_class_name: str) -> None:
    """Raise a ``ValueError`` naming the class and the fix if the plans' network class is not supported."""
    if arch_class_name.split(".")[-1] not in {cls.__name__ for cls in SUPPORTED_ARCHITECTURES}:
        raise ValueError(unsupported_architecture_message(arch_class_name))


class CSSEUNet(nn.Module):
    """U-Net with UAFS and PDCR embeddings, wrapping a base nnU-Net U-Net (see module docstring).

    Args:
        base: a ``PlainConvUNet`` or ``ResidualEncoderUNet`` built from the plan.
        config: CSSE settings fitted to this network (``CSSEConfig.fit_levels``): which UAFS blocks, which PDCR
            layers and projection heads.

    Shapes: input (B, C_in, *patch); output (B, num_classes, *patch) or, with deep supervision, a list of
    such tensors from full to lowest resolution (as nnU-Net).
    """

    def __init__(self, base: nn.Module, config: CSSEConfig) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_ARCHITECTURES) or type(base.decoder) is not UNetDecoder:
            raise ValueError(unsupported_architecture_message(f"{type(base).__module__}.{type(base).__name__}"))
        self.encoder = base.encoder
        self.decoder = base.decoder
        encoder = self.encoder
        self.dim = len(encoder.strides[0])
        n_levels = len(encoder.stages)
        if config.fit_levels(n_levels)[0] != config:
            raise ValueError(f"the CSSE settings' PDCR levels do not fit this network of {n_levels} stages; build it "
                             f"with CSSEConfig.fit_levels({n_levels})'s settings")
        self.config = config
        uafs_settings, pdcr = config.uafs, config.pdcr
        init = InitWeights_He(1e-2)
        batch_norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[self.dim]
        # the UAFS branch's normalization: the plan's own, or the authors' batch norm + ReLU
        if uafs_settings.norm == "batch":
            branch_norm = (batch_norm, {}, nn.ReLU, {})
        else:
            branch_norm = (encoder.norm_op, encoder.norm_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs)

        def uafs(channels: int, stage_kernel: Sequence[int] | int) -> UAFSBlock:
            stage_kernel = (stage_kernel,) * self.dim if isinstance(stage_kernel, int) else stage_kernel
            # k on every axis the stage convolves along; anisotropic stages (kernel 1 on an axis) stay in-plane
            kernel = tuple(uafs_settings.kernel_size if k > 1 else 1 for k in stage_kernel)
            block = UAFSBlock(channels, encoder.conv_op, *branch_norm, uafs_settings.num_branches, kernel)
            block.apply(init)
            return block

        self.encoder_uafs = nn.ModuleList(
            [uafs(encoder.output_channels[s], encoder.kernel_sizes[s]) for s in range(n_levels)]
        ) if uafs_settings.encoder else None
        # decoder stage i (computation order) produces resolution level n_levels - 2 - i
        self.decoder_uafs = nn.ModuleList(
            [uafs(encoder.output_channels[n_levels - 2 - i], encoder.kernel_sizes[n_levels - 2 - i])
             for i in range(len(self.decoder.stages))]
        ) if uafs_settings.decoder else None

        self.encoder_fields = self._encoder_fields()
        self.decoder_fields = self._decoder_fields()
        self.encoder_anchor_layers: tuple[AnchorLayer, ...] = ()
        self.decoder_anchor_layers: tuple[AnchorLayer, ...] = ()
        if pdcr.anchors_encoder:
            self.encoder_anchor_layers = tuple(
                AnchorLayer(f"encoder{lv}", lv, self.encoder_fields[lv].stride, self.encoder_fields[lv])
                for lv in sorted(set(pdcr.encoder_stages))
            )
        if pdcr.decoder_weight > 0:
            self.decoder_anchor_layers = tuple(
                AnchorLayer(f"decoder{lv}", lv, self.decoder_fields[lv].stride, self.decoder_fields[lv])
                for lv in sorted(set(pdcr.decoder_stages))
            )
        self.pdcr_projections = None
        if pdcr.cross_weight > 0:
            first, second = self.encoder_anchor_layers[:2]
            width = pdcr.projection_channels or encoder.output_channels[first.level]
            channels = [encoder.output_channels[layer.level] for layer in (first, second)]
            if pdcr.variant == "authors":
                # their heads: 1x1 conv + batch norm + ReLU over the whole map, He init; anchors sampled after
                self.pdcr_projections = nn.ModuleList(
                    [nn.Sequential(encoder.conv_op(c, width, 1), batch_norm(width), nn.ReLU()) for c in channels]
                )
                self.pdcr_projections.apply(init)
            else:  # a linear head on the sampled anchors
                self.pdcr_projections = nn.ModuleList([nn.Linear(c, width) for c in channels])
        self.return_hidden = False

    # ----------------------------------------------------------------------------------------- geometry
    def _encoder_fields(self) -> list[ExactField]:
        """Exact field of each encoder stage's output (after its UAFS block, if any), by resolution level."""
        field = ExactField(self.dim)
        stem = getattr(self.encoder, "stem", None)
        if stem is not None:
            field = field.then(module_geometry(stem, self.dim))
        fields = []
        for s, stage in enumerate(self.encoder.stages):
            field = field.then(module_geometry(stage, self.dim))
            if self.encoder_uafs is not None:
                field = field.then(module_geometry(self.encoder_uafs[s], self.dim))
            fields.append(field)
        return fields

    def _decoder_fields(self) -> dict[int, ExactField]:
        """Exact field of each decoder stage's output by resolution level: the union of the upsampled deeper map's
        paths and the skip connection's, through the stage's convolutions (and its UAFS block)."""
        field = self.encoder_fields[-1]
        n_levels = len(self.encoder.stages)
        fields = {}
        for i, (transp, stage) in enumerate(zip(self.decoder.transpconvs, self.decoder.stages)):
            level = n_levels - 2 - i
            field = field.then(module_geometry(transp, self.dim)).union(self.encoder_fields[level])
            field = field.then(module_geometry(stage, self.dim))
            if self.decoder_uafs is not None:
                field = field.then(module_geometry(self.decoder_uafs[i], self.dim))
            fields[level] = field
        return fields

    @property
    def anchor_layers(self) -> tuple[AnchorLayer, ...]:
        """Every anchored layer (encoder, then decoder): they share one anchor grid."""
        return self.encoder_anchor_layers + self.decoder_anchor_layers

    def anchor_grid(self, input_shape: Sequence[int]) -> InputGrid:
        """The one anchor grid (input voxels) of every anchored layer for an input of ``input_shape``: the
        network samples it and hands it to the loss with the anchors."""
        return self.config.pdcr.input_grid(tuple(input_shape), self.anchor_layers)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor):
        h = x
        stem = getattr(self.encoder, "stem", None)
        if stem is not None:
            h = stem(h)
        skips = []
        for s, stage in enumerate(self.encoder.stages):
            h = stage(h)
            if self.encoder_uafs is not None:
                h = self.encoder_uafs[s](h)
            skips.append(h)

        decoder = self.decoder
        n_levels = len(skips)
        seg_outputs = []
        decoder_features = {}
        lres = skips[-1]
        for i in range(len(decoder.stages)):
            h = decoder.transpconvs[i](lres)
            h = decoder.stages[i](torch.cat((h, skips[-(i + 2)]), 1))
            if self.decoder_uafs is not None:
                h = self.decoder_uafs[i](h)
            decoder_features[n_levels - 2 - i] = h
            if decoder.deep_supervision:
                seg_outputs.append(decoder.seg_layers[i](h))
            elif i == len(decoder.stages) - 1:
                seg_outputs.append(decoder.seg_layers[-1](h))
            lres = h
        seg_outputs = seg_outputs[::-1]
        output = seg_outputs if decoder.deep_supervision else seg_outputs[0]

        if not (self.return_hidden and self.training):
            return output
        return SegmentationWithHidden(output, self._hidden(tuple(x.shape[2:]), skips, decoder_features))

    def _hidden(self, input_shape: tuple[int, ...], skips: list[torch.Tensor],
                decoder_features: dict[int, torch.Tensor]) -> PDCREmbeddings:
        grid = self.anchor_grid(input_shape)
        pdcr = self.config.pdcr

        def take(layer: AnchorLayer, fmap: torch.Tensor) -> torch.Tensor:
            return grid.on_layer(layer.stride).take(fmap)

        encoder, cross, decoder = (), (), ()
        if pdcr.anchors_encoder:
            encoder_anchors = tuple(take(layer, skips[layer.level]) for layer in self.encoder_anchor_layers)
            if pdcr.encoder_weight > 0:
                encoder = encoder_anchors
            if self.pdcr_projections is not None:
                pair = self.encoder_anchor_layers[:2]
                if pdcr.variant == "authors":  # project the maps, then sample
                    cross = tuple(take(layer, proj(skips[layer.level])) for proj, layer in zip(self.pdcr_projections,
                                                                                                pair))
                else:
                    cross = tuple(proj(a) for proj, a in zip(self.pdcr_projections, encoder_anchors))
        if self.decoder_anchor_layers:
            decoder = tuple(take(layer, decoder_features[layer.level]) for layer in self.decoder_anchor_layers)
        return PDCREmbeddings(grid, encoder, cross, decoder)


def build_csse_network(
    arch_class_name: str,
    arch_kwargs: dict,
    arch_kwargs_req_import: Sequence[str],
    num_input_channels: int,
    num_output_channels: int,
    config: CSSEConfig,
    enable_deep_supervision: bool = True,
) -> CSSEUNet:
    """Build the plan's U-Net with nnU-Net's own builder, then wrap it with UAFS / PDCR parts (``config`` fitted
    to the plan's number of stages)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    check_supported_architecture(arch_class_name)
    base = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
    return CSSEUNet(base, config)
