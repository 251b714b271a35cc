"""Encoder and decoder networks: an MLP (the classic 784-400-20 baseline) and a small conv net.

Both map flat vectors to flat vectors, so the models above them never care which one is in use:
the encoder takes images (B, H, W) or flat pixels (B, H*W) and returns (B, out_dim); the decoder
takes latents with any leading dims (..., in_dim) and returns (..., H*W * channels_out).
An encoder's ``forward_features`` also returns its last hidden layer h (B, feature_dim): the context a flow
posterior conditions on (Kingma et al. 2016, IAF).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["make_encoder", "make_decoder", "MLP", "ConvEncoder", "ConvDecoder", "ARCHS", "count_parameters"]

ARCHS = ("mlp", "conv")


class MLP(nn.Module):
    """in_dim -> hidden... -> out_dim with ReLU between layers (a single Linear when hidden is empty)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.feature_dim = width  # the last hidden width (in_dim without hidden layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., in_dim) -> the output (..., out_dim) and the last hidden layer (..., feature_dim)."""
        h = self.net[:-1](x)
        return self.net[-1](h), h


class ConvEncoder(nn.Module):
    """(B, H*W) -> conv 4x4/2 (32) -> conv 4x4/2 (64) -> flatten -> hidden -> out_dim. H, W divisible by 4."""

    def __init__(self, image_shape: tuple[int, int], hidden: int, out_dim: int, channels: int = 32):
        super().__init__()
        self.image_shape = image_shape
        h, w = image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.ReLU(),  # (B, c, H/2, W/2)
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.ReLU(),  # (B, 2c, H/4, W/4)
        )
        self.head = MLP(2 * channels * (h // 4) * (w // 4), [hidden], out_dim)
        self.feature_dim = hidden

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., H*W) -> the output (..., out_dim) and the dense hidden layer (..., feature_dim)."""
        lead = x.shape[:-1]
        img = x.reshape(-1, 1, *self.image_shape)  # (N, 1, H, W)
        out, h = self.head.forward_features(self.conv(img).flatten(1))
        return out.reshape(*lead, -1), h.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """(..., in_dim) -> hidden -> (2c, H/4, W/4) -> deconv 4x4/2 (c) -> deconv 4x4/2 (out_channels) -> flat."""

    def __init__(self, in_dim: int, hidden: int, image_shape: tuple[int, int], out_channels: int = 1,
                 channels: int = 32):
        super().__init__()
        h, w = image_shape
        self.grid = (2 * channels, h // 4, w // 4)
        self.head = nn.Sequential(MLP(in_dim, [hidden], math.prod(self.grid)), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.ReLU(),  # (N, c, H/2, W/2)
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),  # (N, out, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        feat = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self.grid)
        out = self.deconv(feat)  # (N, out_channels, H, W)
        # channel-major flat layout: [channel 0 pixels, channel 1 pixels], like the MLP's output chunks
        return out.reshape(*lead, -1)


def _check_conv_shape(image_shape: tuple[int, int]) -> None:
    if any(s % 4 for s in image_shape):
        raise ValueError(f"the conv architecture needs image sides divisible by 4, got {image_shape}; use --arch mlp")


def make_encoder(arch: str, image_shape: tuple[int, int], hidden: Sequence[int], out_dim: int) -> nn.Module:
    """Encoder network x -> raw posterior parameters (out_dim per example)."""
    d = math.prod(image_shape)
    if arch == "mlp":
        return MLP(d, hidden, out_dim)
    if arch == "conv":
        _check_conv_shape(image_shape)
        return ConvEncoder(image_shape, hidden[0] if hidden else 256, out_dim)
    raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")


def make_decoder(arch: str, in_dim: int, hidden: Sequence[int], image_shape: tuple[int, int],
                 out_channels: int = 1) -> nn.Module:
    """Decoder network z -> out_channels values per pixel (logits, or mean and log-std), flat."""
    d = math.prod(image_shape)
    if arch == "mlp":
        return MLP(in_dim, list(reversed(hidden)), out_channels * d)
    if arch == "conv":
        _check_conv_shape(image_shape)
        return ConvDecoder(in_dim, hidden[0] if hidden else 256, image_shape, out_channels)
    raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHS)}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

