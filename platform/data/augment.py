"""Batch-wise, vectorised image augmentation (random crop with padding + horizontal flip)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RandomCropFlip:
    """Random `size`-crop of each image padded by `padding` on every side, then a 50% h-flip.

    Works on a whole batch [B, C, H, W] at once: one gather, no per-sample Python loop. The
    padding value `fill` is per channel (pass the normalized value of black when the images are
    already normalized, so the result matches torchvision's RandomCrop(padding=4) before Normalize).
    """

    def __init__(
        self,
        padding: int = 4,
        *,
        flip: bool = True,
        fill: float | Sequence[float] = 0.0,
        seed: int | None = None,
    ) -> None:
        if padding < 0:
            raise ValueError("padding must be >= 0")
        self.padding = padding
        self.flip = flip
        self.fill = torch.as_tensor(fill, dtype=torch.float32)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        p = self.padding
        fill = self.fill.to(images.dtype).expand(c) if self.fill.ndim == 0 else self.fill
        padded = fill.to(images).view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = images
        g = self.generator
        oy = torch.randint(0, 2 * p + 1, (b, 1), generator=g)
        ox = torch.randint(0, 2 * p + 1, (b, 1), generator=g)
        rows = oy + torch.arange(h)
        cols = ox + torch.arange(w)
        if self.flip:
            flipped = torch.rand(b, 1, generator=g) < 0.5
            cols = torch.where(flipped, cols.flip(1), cols)
        batch = torch.arange(b).view(b, 1, 1)
        dev = images.device
        out = padded[batch.to(dev), :, rows[:, :, None].to(dev), cols[:, None, :].to(dev)]
        return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put C last
