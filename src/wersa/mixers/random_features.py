"""Seeded random projections with optional redraw: the one implementation every
random-feature mixer (Performer, WERSA, Waveformer's bands) uses.

A mixer that mixes in :class:`RandomFeatureMixin` holds its projection as the buffer
``projection_matrix`` — ``(m, d)`` shared by the heads, or ``(H, m, d)`` with one matrix
per head (``per_head_features = True``) — drawn from :func:`feature_generator`, so the
same ``feature_seed`` always gives the same draws, and redraw ``r`` is the ``r``-th draw of
that seeded sequence (checkpoints record ``redraws``, so a resumed run continues it).
Redraws happen only in training mode, every ``redraw_interval`` forward calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.feature_maps import orthogonal_random_matrix

# Seeds of successive draws are this far apart, so that no two (seed, draw) pairs of
# practical size share a generator seed.
REDRAW_SEED_STRIDE = 1_000_003


def feature_generator(seed: int, draw: int = 0) -> torch.Generator:
    """The CPU generator of draw ``draw`` of seed ``seed``."""
    return torch.Generator(device="cpu").manual_seed(int(seed) + REDRAW_SEED_STRIDE * int(draw))


def check_random_feature_options(name: str, num_features: int, feature_seed: int,
                                 redraw_interval: int | None) -> None:
    """Clear ``ValueError`` s for the options every random-feature mixer shares."""
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features <= 0:
        raise ValueError(f"{name}: num_features must be a positive integer, got {num_features!r}")
    if not isinstance(feature_seed, int) or isinstance(feature_seed, bool) or feature_seed < 0:
        raise ValueError(f"{name}: feature_seed must be a non-negative integer, got {feature_seed!r}")
    if redraw_interval is not None and (
            not isinstance(redraw_interval, int) or isinstance(redraw_interval, bool) or redraw_interval <= 0):
        raise ValueError(f"{name}: redraw_interval must be None or a positive integer, got {redraw_interval!r}")


class RandomFeatureMixin:
    """A seeded orthogonal projection buffer with optional redraw in training mode.

    Expects ``self.num_features``, ``self.head_dim``, ``self.num_heads``, ``self.feature_seed``
    and ``self.redraw_interval`` to be set before :meth:`_init_features`.
    """

    per_head_features: bool = False  # True: one (m, d) matrix per head, stacked (H, m, d)
    projection_matrix: Tensor
    redraws: Tensor
    calls_since_redraw: Tensor

    def _draw(self, index: int, device=None) -> Tensor:
        g = feature_generator(self.feature_seed, index)
        count = self.num_heads if self.per_head_features else 1
        mats = [orthogonal_random_matrix(self.num_features, self.head_dim, scaling="gaussian",
                                         generator=g, dtype=torch.float32) for _ in range(count)]
        w = torch.stack(mats) if self.per_head_features else mats[0]
        return w.to(device)

    def _init_features(self) -> None:
        self.register_buffer("projection_matrix", self._draw(0))
        self.register_buffer("redraws", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls_since_redraw", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Replace the projection by the next draw of the seeded sequence."""
        self.redraws += 1
        w = self._draw(int(self.redraws), device=self.projection_matrix.device)
        self.projection_matrix.copy_(w.to(self.projection_matrix.dtype))
        self.calls_since_redraw.zero_()

    def _upgrade_state_dict(self, state_dict, prefix: str) -> None:
        super()._upgrade_state_dict(state_dict, prefix)  # renamed keys first (Mixer)
        # Checkpoints from before the redraw counter existed (0.1.0's WERSA): no redraw yet.
        if prefix + "projection_matrix" in state_dict and prefix + "redraws" not in state_dict:
            state_dict[prefix + "redraws"] = torch.zeros((), dtype=torch.long)

    def _maybe_redraw(self) -> None:
        # Reads a buffer only when redraw is on (a host sync per training forward then).
        if self.redraw_interval is None or not self.training:
            return
        if int(self.calls_since_redraw) >= self.redraw_interval:
            self.redraw_features()
        self.calls_since_redraw += 1
