"""Tell a forward pass that activation checkpointing re-runs during backward from a real one.

``torch.utils.checkpoint`` (both variants), the FSDP/``checkpoint_wrapper``
wrappers and Hugging Face's ``gradient_checkpointing`` drop a block's
activations in the forward pass and run the block's forward again inside the
backward pass to rebuild them. Forward hooks fire on that second run too, so a
tracker that recorded it would fold every checkpointed batch in twice (twice
the samples, twice the cost, and a ``max_samples`` budget spent at double
speed). Autograd runs the backward pass as a graph task; outside one, the
current task id is -1.
"""

from __future__ import annotations

import torch

__all__ = ["in_backward_pass"]

_current_task = getattr(torch._C, "_current_graph_task_id", None)


def in_backward_pass() -> bool:
    """Whether the caller runs inside autograd's backward pass (a checkpoint's recomputation).

    Returns False where this torch build does not say (then recomputed
    forwards are recorded, as before).
    """
    return _current_task is not None and _current_task() != -1
