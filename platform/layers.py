"""Trainable projections: a linear map (dense, conv, transposed conv) with optional bias, batch
norm, weight spectral normalisation and a variational dropout mask.

Each layer exports itself as a spec :class:`~fsnn.platform.spec.Projection` with batch norm folded
into its weight and bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fsnn.platform.spec import Projection, ProjectionKind, projection_output_shape

BN_EPS = 1e-5


class SpectralNorm(nn.Module):
    """W = clamp(g, -r, r) * W_raw / sigma(W_raw), sigma from one power iteration per refresh."""

    def __init__(self, weight: torch.Tensor, norm_range: float, dim: int = 0) -> None:
        super().__init__()
        self.norm_range = norm_range
        self.dim = dim
        mat = self._matrix(weight)
        with torch.no_grad():
            u = F.normalize(torch.randn(mat.shape[0]), dim=0)
            v = F.normalize(torch.randn(mat.shape[1]), dim=0)
            for _ in range(10):
                v = F.normalize(mat.t() @ u, dim=0)
                u = F.normalize(mat @ v, dim=0)
            sigma = torch.dot(u, mat @ v)
        self.raw = nn.Parameter(weight.detach().clone())
        self.g = nn.Parameter(sigma.detach().clone())
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    def _matrix(self, w: torch.Tensor) -> torch.Tensor:
        if self.dim != 0:
            w = w.transpose(0, self.dim)
        return w.reshape(w.shape[0], -1)

    @torch.no_grad()
    def refresh(self) -> None:
        mat = self._matrix(self.raw)
        self.v.copy_(F.normalize(mat.t() @ self.u, dim=0))
        self.u.copy_(F.normalize(mat @ self.v, dim=0))

    def forward(self) -> torch.Tensor:
        mat = self._matrix(self.raw)
        sigma = torch.dot(self.u, mat @ self.v)
        g = torch.clamp(self.g, -self.norm_range, self.norm_range)
        return self.raw * (g / sigma)


class ProjectionLayer(nn.Module):
    def __init__(self, kind: ProjectionKind, in_shape: tuple[int, ...], out_features: int, *,
                 kernel: int = 1, stride: int = 1, padding: int = 0, output_padding: int = 0,
                 bias: bool = True, batch_norm: bool = False, spectral_norm: float | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.kind: ProjectionKind = kind
        self.in_shape = tuple(in_shape)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.dropout = dropout
        if kind == "dense":
            shape: tuple[int, ...] = (out_features, math.prod(in_shape))
        elif kind == "conv":
            shape = (out_features, in_shape[0], kernel, kernel)
        else:
            shape = (in_shape[0], out_features, kernel, kernel)
        w = torch.empty(shape).uniform_(-1.0, 1.0)
        # unit L2 norm per output unit (the IDE code's initialisation)
        if kind == "conv_transpose":
            w = w / w.transpose(0, 1).reshape(out_features, -1).norm(dim=1).view(1, -1, 1, 1)
        else:
            w = w / w.reshape(out_features, -1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
        self.sn: SpectralNorm | None = None
        if spectral_norm is not None:
            self.sn = SpectralNorm(w, spectral_norm)
        else:
            self.weight_raw = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.bn = nn.BatchNorm1d(out_features, eps=BN_EPS) if batch_norm else None
        probe = Projection("probe", "a", "b", kind, torch.empty(shape), None, stride, padding,
                           output_padding)
        self.out_shape = projection_output_shape(probe, self.in_shape)

    # -- the linear map -------------------------------------------------------------------------
    def raw_weight(self) -> torch.Tensor:
        return self.sn() if self.sn is not None else self.weight_raw

    def refresh(self) -> None:
        if self.sn is not None and self.training:
            self.sn.refresh()

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.kind == "dense":
            return F.linear(x.flatten(1), weight).view(x.shape[0], *self.out_shape)
        if self.kind == "conv":
            return F.conv2d(x, weight, stride=self.stride, padding=self.padding)
        return F.conv_transpose2d(x, weight, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding)

    def _channel(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *([1] * (len(self.out_shape) - 1)))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) with batch norm folded in using its running statistics."""
        w = self.raw_weight()
        b = self.bias
        if self.bn is None:
            return w, b
        bn = self.bn
        assert bn.running_var is not None and bn.running_mean is not None
        # clones: the running statistics are updated in place after the forward simulation
        scale = bn.weight / torch.sqrt(bn.running_var.clone() + bn.eps)
        shift = bn.bias - bn.running_mean.clone() * scale
        b = shift if b is None else b * scale + shift
        if self.kind == "conv_transpose":
            w = w * scale.view(1, -1, *([1] * (w.dim() - 2)))
        else:
            w = w * scale.view(-1, *([1] * (w.dim() - 1)))
        return w, b

    @property
    def batch_statistics(self) -> bool:
        """Whether batch norm normalises with the batch's statistics (training, not frozen)."""
        return self.bn is not None and self.bn.training

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output on a constant input: batch norm with batch statistics in training;
        otherwise the folded weight and bias, the very numbers the exported spec holds."""
        if not self.batch_statistics:
            w, b = self.folded()
            out = self.linear(x, w)
            return out if b is None else out + self._channel(b)
        out = self.linear(x, self.raw_weight())
        if self.bias is not None:
            out = out + self._channel(self.bias)
        if self.bn is not None:
            flat = out.transpose(0, 1).reshape(out.shape[1], -1).t() if out.dim() > 2 else out
            normed = self.bn(flat)
            out = normed.t().reshape(out.shape[1], out.shape[0], *out.shape[2:]).transpose(0, 1) \
                if out.dim() > 2 else normed
        return out

    @torch.no_grad()
    def update_bn(self, x: torch.Tensor) -> None:
        """Update batch-norm running statistics from this layer's input ``x`` (ring layers)."""
        if self.bn is None or not self.batch_statistics:
            return
        out = self.linear(x, self.raw_weight())
        if self.bias is not None:
            out = out + self._channel(self.bias)
        dims = [0, *range(2, out.dim())]
        mean = out.mean(dims)
        var = out.var(dims, unbiased=True)
        m = self.bn.momentum if self.bn.momentum is not None else 0.1
        assert self.bn.running_mean is not None and self.bn.running_var is not None
        self.bn.running_mean.mul_(1 - m).add_(m * mean)
        self.bn.running_var.mul_(1 - m).add_(m * var)

    def sample_mask(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """A variational dropout mask for one batch (``None`` when off): boolean, 1 byte a
        neuron; its 1/keep scale goes into the weight (:attr:`dropout_scale`), where it costs
        nothing, instead of a 4-byte mask kept for the whole backward pass."""
        if not self.training or self.dropout <= 0:
            return None
        return torch.rand((batch, *self.out_shape), device=device) < 1.0 - self.dropout

    @property
    def dropout_scale(self) -> float:
        """What the kept outputs are multiplied by in training (inverted dropout: 1/keep)."""
        return 1.0 / (1.0 - self.dropout) if self.dropout > 0 else 1.0

    def export(self, name: str, source: str, target: str, *, feedback: bool,
               delay: int = 1) -> Projection:
        w, b = self.folded()
        return Projection(name=name, source=source, target=target, kind=self.kind,
                          weight=w.detach().clone(), bias=None if b is None else b.detach().clone(),
                          stride=self.stride, padding=self.padding,
                          output_padding=self.output_padding, delay=delay, feedback=feedback)
