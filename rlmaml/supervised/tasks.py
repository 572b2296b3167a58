"""The batch of few-shot tasks exchanged between data samplers and the meta-learning core."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """A batch of few-shot tasks, each with a support (adaptation) and a query (evaluation) set.

    Every tensor has a leading task axis of the same length ``T``, so the core can adapt to all
    tasks of a meta-batch at once (e.g. with ``torch.func.vmap``) or iterate over them.

    Attributes:
        support_x: Support inputs, shape ``[T, K_support, *input_shape]``.
        support_y: Support targets, shape ``[T, K_support, ...]`` (regression values or class
            labels).
        query_x: Query inputs, shape ``[T, K_query, *input_shape]``.
        query_y: Query targets, shape ``[T, K_query, ...]``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device: torch.device | str) -> TaskBatch:
        """Returns a copy with every tensor moved to ``device``.

        Args:
            device: Target device, e.g. ``"cuda"``.

        Returns:
            A new ``TaskBatch``; tensors already on ``device`` are shared, not copied.
        """
        return TaskBatch(*(tensor.to(device) for tensor in self))
