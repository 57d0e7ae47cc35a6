"""CSSE U-Net: nnU-Net's PlainConvUNet / ResidualEncoderUNet with UAFS blocks and PDCR hidden outputs.

The network reuses the encoder and decoder modules that nnU-Net's ``get_network_from_plans`` builds from the
plan (same parameters, same state-dict keys), adds UAFS blocks (``decoder_uafs``, optionally ``encoder_uafs``)
and, for cross-layer PDCR, 1x1 projection heads (``pdcr_projections``). Deep supervision is switched exactly as
in nnU-Net (``network.decoder.deep_supervision``), and every segmentation head is always built.

Hidden embeddings reach the trainer through ``forward`` itself, so DDP and torch.compile see one ordinary
forward: when ``return_hidden`` is set and the module is in training mode, ``forward`` returns
``(segmentation_output, hidden)`` where ``hidden`` maps ``"encoder"``, ``"decoder"`` and ``"cross"`` to tuples of
(B, N, C) anchor vectors (only the terms with a weight > 0 are computed, so no parameter goes unused). In eval
mode, or with ``return_hidden`` unset, the output is exactly what nnU-Net's networks return.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_csse.anchors import AnchorLayer
from nnunet_csse.config import CSSEConfig
from nnunet_csse.receptive_field import FieldState, module_geometry, propagate
from nnunet_csse.uafs import UAFSBlock

SUPPORTED_ARCHITECTURES = (PlainConvUNet, ResidualEncoderUNet)


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


def resolve_levels(requested: Sequence[int], available: int) -> tuple[int, ...]:
    """Map requested resolution levels onto ``range(available)``.

    Levels beyond the network are clipped to the deepest one; if that merges levels, shallower neighbours are
    added so the number of distinct levels is kept where the network allows it (e.g. (2, 3) on a 3-level
    network -> (1, 2)).
    """
    if available < 1:
        raise ValueError("the network has no resolution level to anchor PDCR at")
    wanted = len(set(requested))
    levels = sorted({min(level, available - 1) for level in requested})
    while len(levels) < min(wanted, available):
        levels = sorted({levels[0] - 1, *levels}) if levels[0] > 0 else sorted({*levels, levels[-1] + 1})
    return tuple(levels)


class CSSEUNet(nn.Module):
    """U-Net with UAFS and PDCR embeddings, wrapping a base nnU-Net U-Net (see module docstring).

    Args:
        base: a ``PlainConvUNet`` or ``ResidualEncoderUNet`` built from the plan.
        config: CSSE settings (which UAFS blocks, which PDCR layers and projection heads).

    Shapes: input (B, C_in, *patch); output (B, num_classes, *patch) or, with deep supervision, a list of
    such tensors from full to lowest resolution (as nnU-Net).
    """

    def __init__(self, base: nn.Module, config: CSSEConfig) -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_ARCHITECTURES) or type(base.decoder) is not UNetDecoder:
            raise ValueError(unsupported_architecture_message(f"{type(base).__module__}.{type(base).__name__}"))
        self.config = config
        self.encoder = base.encoder
        self.decoder = base.decoder
        encoder = self.encoder
        self.dim = len(encoder.strides[0])
        n_levels = len(encoder.stages)
        init = InitWeights_He(1e-2)

        def uafs(channels: int, stage_kernel: Sequence[int] | int) -> UAFSBlock:
            stage_kernel = (stage_kernel,) * self.dim if isinstance(stage_kernel, int) else stage_kernel
            # anisotropic stages (kernel 1 along an axis) keep the branch in-plane along that axis too
            kernel = tuple(min(config.uafs_kernel_size, k) if k % 2 else config.uafs_kernel_size
                           for k in stage_kernel)
            block = UAFSBlock(channels, encoder.conv_op, encoder.norm_op, encoder.norm_op_kwargs, encoder.nonlin,
                              encoder.nonlin_kwargs, config.uafs_num_branches, kernel)
            block.apply(init)
            return block

        self.encoder_uafs = nn.ModuleList(
            [uafs(encoder.output_channels[s], encoder.kernel_sizes[s]) for s in range(n_levels)]
        ) if config.uafs_encoder else None
        # decoder stage i (computation order) produces resolution level n_levels - 2 - i
        self.decoder_uafs = nn.ModuleList(
            [uafs(encoder.output_channels[n_levels - 2 - i], encoder.kernel_sizes[n_levels - 2 - i])
             for i in range(len(self.decoder.stages))]
        ) if config.uafs_decoder else None

        self.encoder_fields = self._encoder_fields()
        self.decoder_fields = self._decoder_fields()
        self.encoder_anchor_layers: tuple[AnchorLayer, ...] = ()
        self.decoder_anchor_layers: tuple[AnchorLayer, ...] = ()
        if config.pdcr_encoder_weight > 0 or config.pdcr_cross_weight > 0:
            self.encoder_anchor_layers = tuple(
                AnchorLayer(f"encoder{lv}", lv, self.encoder_fields[lv].stride,
                            self.encoder_fields[lv].receptive_field)
                for lv in resolve_levels(config.pdcr_encoder_stages, n_levels)
            )
        if config.pdcr_decoder_weight > 0:
            self.decoder_anchor_layers = tuple(
                AnchorLayer(f"decoder{lv}", lv, self.decoder_fields[lv].stride,
                            self.decoder_fields[lv].receptive_field)
                for lv in resolve_levels(config.pdcr_decoder_stages, n_levels - 1)
            )
        self.pdcr_projections = None
        if config.pdcr_cross_weight > 0:
            if len(self.encoder_anchor_layers) < 2:
                raise ValueError(
                    f"cross-layer PDCR needs two encoder levels but this network has {n_levels}; set "
                    f"'pdcr_cross_weight' to 0 in the plans' \"csse\" settings"
                )
            first, second = self.encoder_anchor_layers[:2]
            width = config.pdcr_projection_channels or encoder.output_channels[first.level]
            self.pdcr_projections = nn.ModuleList(
                [nn.Linear(encoder.output_channels[layer.level], width) for layer in (first, second)]
            )
        self.return_hidden = False

    # ----------------------------------------------------------------------------------------- geometry
    def _encoder_fields(self) -> list[FieldState]:
        state = FieldState.identity(self.dim)
        stem = getattr(self.encoder, "stem", None)
        if stem is not None:
            state = propagate(state, module_geometry(stem, self.dim))
        fields = []
        for s, stage in enumerate(self.encoder.stages):
            state = propagate(state, module_geometry(stage, self.dim))
            if self.encoder_uafs is not None:
                state = propagate(state, module_geometry(self.encoder_uafs[s], self.dim))
            fields.append(state)
        return fields

    def _decoder_fields(self) -> dict[int, FieldState]:
        """Receptive field of each decoder output by resolution level (the deep path dominates)."""
        state = self.encoder_fields[-1]
        n_levels = len(self.encoder.stages)
        fields = {}
        for i, (transp, stage) in enumerate(zip(self.decoder.transpconvs, self.decoder.stages)):
            state = propagate(state, module_geometry(transp, self.dim))
            state = propagate(state, module_geometry(stage, self.dim))
            if self.decoder_uafs is not None:
                state = propagate(state, module_geometry(self.decoder_uafs[i], self.dim))
            fields[n_levels - 2 - i] = state
        return fields

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
        return output, self._hidden(skips, decoder_features)

    def _hidden(self, skips: list[torch.Tensor], decoder_features: dict[int, torch.Tensor]) -> dict:
        def take(layer: AnchorLayer, fmap: torch.Tensor) -> torch.Tensor:
            return self.config.anchor_grid(fmap.shape[2:], layer.stride).take(fmap)

        hidden = {}
        if self.config.pdcr_encoder_weight > 0 or self.pdcr_projections is not None:
            encoder_anchors = tuple(take(layer, skips[layer.level]) for layer in self.encoder_anchor_layers)
            if self.config.pdcr_encoder_weight > 0:
                hidden["encoder"] = encoder_anchors
            if self.pdcr_projections is not None:
                hidden["cross"] = tuple(proj(a) for proj, a in zip(self.pdcr_projections, encoder_anchors))
        if self.decoder_anchor_layers:
            hidden["decoder"] = tuple(
                take(layer, decoder_features[layer.level]) for layer in self.decoder_anchor_layers
            )
        return hidden

    @torch.no_grad()
    def uncertainty_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """UAFS uncertainty H of every decoder stage, by resolution level: (B, 1, *level_shape) float32."""
        if self.decoder_uafs is None:
            raise ValueError("this network has no decoder UAFS blocks (trained without UAFS)")
        n_levels = len(self.encoder.stages)
        maps: dict[int, torch.Tensor] = {}

        def recorder(level: int):
            def hook(block: UAFSBlock, inputs: tuple, output: torch.Tensor) -> None:
                maps[level] = block.uncertainty(inputs[0])
            return hook

        hooks = [block.register_forward_hook(recorder(n_levels - 2 - i)) for i, block in enumerate(self.decoder_uafs)]
        try:
            self.forward(x)
        finally:
            for hook in hooks:
                hook.remove()
        return maps


def build_csse_network(
    arch_class_name: str,
    arch_kwargs: dict,
    arch_kwargs_req_import: Sequence[str],
    num_input_channels: int,
    num_output_channels: int,
    config: CSSEConfig,
    enable_deep_supervision: bool = True,
) -> CSSEUNet:
    """Build the plan's U-Net with nnU-Net's own builder, then wrap it with UAFS / PDCR parts."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    check_supported_architecture(arch_class_name)
    base = get_network_from_plans(arch_class_name, arch_kwargs, arch_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
    return CSSEUNet(base, config)
