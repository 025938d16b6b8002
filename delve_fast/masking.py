"""Token masks: leave padded positions out of a layer's covariance.

A mask ``(B, T)`` marks which tokens of a padded batch are real (non-zero or
True = keep). For a batch viewed as ``(N, C, S)`` with ``S == T``, the mask
becomes a 0/1 weight per sample, and :class:`WeightedMoments` folds the batch
in with pure tensor operations: no boolean indexing, no ``.item()``, so a GPU
is never synchronised in the forward hook. The moments keep their sample
count on the device and are merged into the layer's
:class:`~delve_fast.state.CovarianceState` (Chan's pairwise rule) only when
the statistics are computed, where the tracker synchronises anyway.

Masked batches take this pure-torch path instead of the compiled update op.
"""

from __future__ import annotations

import torch

from delve_fast._warn import warn_user
from delve_fast.state import CovarianceState

__all__ = ["check_token_mask", "mask_weight", "MaskUsage", "WeightedMoments"]


def check_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """Validate a ``(B, T)`` token mask and return it as bool (True = keep), without a host sync.

    Parameters
    ----------
    mask : torch.Tensor
        ``(B, T)``: bool, or numbers where non-zero means keep (a Hugging Face
        ``attention_mask``). Note that PyTorch's ``key_padding_mask`` uses the
        opposite convention (True = padding): pass ``~key_padding_mask``.

    Raises
    ------
    TypeError
        If ``mask`` is not a tensor.
    ValueError
        If it is not 2-D.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"a token mask must be a torch.Tensor of shape (B, T), got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"a token mask must have shape (B, T) (batch, tokens), got {tuple(mask.shape)}")
    return mask.detach() if mask.dtype == torch.bool else mask.detach() != 0


def mask_weight(view: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The ``(N, S)`` keep-mask for a batch viewed ``(N, C, S)``, or None when the mask does not apply.

    The mask applies when the view has one sample per token (``S == T``) and
    at most ``B`` rows (``max_samples`` may have cut the batch; the mask is
    cut alike). Other outputs (a pooled ``(B, C)`` head, an LSTM's last
    timestep, a conv map) are recorded whole.
    """
    if mask is None or view.dim() != 3:
        return None
    b, t = mask.shape
    if view.shape[2] != t or view.shape[0] > b or (t == 1 and view.shape[0] != b):
        return None
    return mask[: view.shape[0]]


class MaskUsage:
    """Whether the token mask in force applied to any recorded output, to warn about a mask that fits none.

    A mask whose shape matches no tracked layer's output (tokens and batch
    swapped, a mask for another sequence length) is otherwise silently
    ignored: every layer is then recorded whole, padding included.
    """

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.applied = 0
        self.missed = 0
        self.warned = False

    def start(self, mask: torch.Tensor | None) -> None:
        """A new mask (or None) is in force from now on: report on the previous one first."""
        self.report()
        self.shape = None if mask is None else tuple(mask.shape)

    def note(self, weight: torch.Tensor | None) -> None:
        """One recorded output under the mask: ``weight`` is what :func:`mask_weight` returned."""
        if weight is None:
            self.missed += 1
        else:
            self.applied += 1

    def report(self) -> None:
        """Warn (once per tracker) if the mask in force so far applied to no recorded output."""
        if self.shape is not None and self.missed and not self.applied and not self.warned:
            self.warned = True
            b, t = self.shape
            warn_user(
                f"delve_fast: the token mask of shape {self.shape} applied to none of the {self.missed} layer "
                f"output(s) recorded while it was set, so they were recorded whole, padding included; a mask "
                f"(batch, tokens) applies to outputs with one sample per token ({t} tokens, at most {b} rows)",
                RuntimeWarning,
            )
        self.applied = self.missed = 0


class WeightedMoments:
    """Count, mean and centred sum of outer products of 0/1-weighted samples, all on the device.

    Parameters
    ----------
    device : torch.device
        Where the moments live (the layer state's device).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.count: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, view: torch.Tensor, keep: torch.Tensor) -> None:
        """Fold the kept samples of ``view`` ``(N, C, S)``; ``keep`` is ``(N, S)`` bool.

        Dropped positions are replaced by zeros before any product, so NaN or
        infinite padding cannot leak into the moments.
        """
        x = view.to(self.device, torch.float64, non_blocking=True)
        keep = keep.to(self.device, non_blocking=True)
        c = int(x.shape[1])
        if self.m2 is None:
            self.count = torch.zeros((), dtype=torch.float64, device=self.device)
            self.mean = torch.zeros(c, dtype=torch.float64, device=self.device)
            self.m2 = torch.zeros(c, c, dtype=torch.float64, device=self.device)
        elif c != self.mean.shape[0]:
            raise ValueError(f"masked batch has {c} features but the layer's state has {self.mean.shape[0]}")
        w = keep.to(torch.float64)
        rows = torch.where(keep.unsqueeze(-1), x.transpose(1, 2), 0.0).reshape(-1, c)  # (N*S, C), zeros dropped
        w = w.reshape(-1, 1)
        n_b = w.sum()
        mean_b = rows.sum(0) / n_b.clamp_min(1.0)  # n_b == 0 gives a zero mean that carries no weight below
        centred = (rows - mean_b) * w  # dropped rows stay exactly zero
        m2_b = centred.T @ centred
        m2_b = (m2_b + m2_b.T) * 0.5  # exactly symmetric, as the state's m2 is
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean.add_(delta * (n_b / n.clamp_min(1.0)))
        self.m2.add_(m2_b).add_(torch.outer(delta, delta) * (n_a * n_b / n.clamp_min(1.0)))
        self.count = n

    def merge_into(self, state: CovarianceState) -> None:
        """Merge the moments into ``state`` and forget them (reads the count: one host sync)."""
        if self.m2 is None:
            return
        count = int(round(float(self.count.item())))
        if count > 0:
            part = CovarianceState(device=state.device or self.device)
            part.load_state_dict({"count": count, "mean": self.mean, "m2": self.m2})
            state.merge(part)
        self.count = self.mean = self.m2 = None
