"""Apply a per-task function to a batch of tasks: vectorised with ``vmap`` or in a loop.

Task data is any pytree of tensors (tuples, dicts, NamedTuples) whose leaves carry a leading
task axis. Both strategies return the same pytree of outputs stacked along that axis, so the
caller never knows which one ran; a test checks that they agree numerically. ``vmap`` batches
every operation over tasks (fast for MLPs); the loop keeps per-task kernels (sometimes faster for
convolutions on a CPU, and the fallback for models ``vmap`` cannot trace).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree

TaskFn = Callable[..., Any]


def num_tasks(*task_data: Any) -> int:
    """The length of the leading task axis shared by every tensor in ``task_data``."""
    sizes = {leaf.shape[0] for leaf in pytree.tree_leaves(task_data) if torch.is_tensor(leaf)}
    if len(sizes) != 1:
        raise ValueError(f"task data must share one leading task axis, got lengths {sorted(sizes)}")
    return sizes.pop()


def map_tasks(
    fn: TaskFn, *task_data: Any, vectorize: bool = True, chunk_size: int | None = None
) -> Any:
    """``fn`` applied to each task's slice of ``task_data``, outputs stacked along a task axis.

    Args:
        fn: a function of one task's data (each argument without the task axis).
        task_data: pytrees of tensors with a leading task axis.
        vectorize: use :func:`torch.func.vmap` (True) or a Python loop over tasks (False).
        chunk_size: with ``vectorize``, process at most this many tasks at once to bound memory.
    """
    if vectorize:
        return torch.func.vmap(fn, chunk_size=chunk_size, randomness="different")(*task_data)
    outputs = [
        fn(*pytree.tree_map(lambda leaf, i=i: leaf[i], task_data))
        for i in range(num_tasks(*task_data))
    ]
    return pytree.tree_map(lambda *leaves: torch.stack(leaves), *outputs)
