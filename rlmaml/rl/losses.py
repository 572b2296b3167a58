"""Policy-gradient losses for one task, written for the MAML core (``task_loss(params, data)``).

Every function takes one task's data (no task axis: ``[episode, time, ...]``) so the core can
map it over tasks with ``vmap``. Means are over valid (unmasked) time steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rlmaml.core import Params
from rlmaml.rl.distributions import Distribution
from rlmaml.rl.policies import distribution


class PolicyBatch(NamedTuple):
    """What a policy-gradient loss needs from sampled episodes (task axis first, if any).

    Every field has the leading axes ``[T, rows, H]``; a row is an episode as sampled, or, after
    :meth:`packed`, a stretch of ``H`` consecutive valid steps of one task.
    """

    observations: Tensor
    actions: Tensor
    advantages: Tensor
    log_probs: Tensor
    masks: Tensor

    def packed(self) -> PolicyBatch:
        """The same steps with each task's padding squeezed out: ``[T, rows', H]``.

        Every loss here is a per-step quantity averaged over valid steps, and the advantages
        already carry everything that needed episode boundaries (returns, baseline, GAE), so
        the losses need only the steps themselves. Episodes that end early leave most of their
        row as padding (a batch counted in time steps can hold four or more times as many
        slots as steps); packing moves each task's valid steps, in order, to the front of its
        rows and drops the rows no task needs, so the policy's forward and backward passes in
        the inner and outer steps run over ``rows' = ceil(max valid steps per task / H)`` rows
        instead. The losses are unchanged up to the order of summation. A batch with nothing
        to drop is returned as it is.
        """
        masks = self.masks
        num_tasks, rows, horizon = masks.shape
        valid = masks.reshape(num_tasks, rows * horizon) != 0
        needed = max(math.ceil(int(valid.sum(dim=1).max()) / horizon), 1)
        if needed >= rows:
            return self
        # A stable sort on "is padding" lists each task's valid steps first, in their order.
        order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices
        order = order[:, : needed * horizon]

        def gather(field: Tensor) -> Tensor:
            flat = field.reshape(num_tasks, rows * horizon, *field.shape[3:])
            index = order.reshape(num_tasks, -1, *[1] * (flat.dim() - 2))
            picked = flat.gather(1, index.expand(-1, -1, *flat.shape[2:]))
            return picked.reshape(num_tasks, needed, horizon, *field.shape[3:])

        return PolicyBatch(*(gather(field) for field in self))


def masked_mean(values: Tensor, masks: Tensor) -> Tensor:
    """Mean of ``values`` over the steps where ``masks`` is 1."""
    return (values * masks).sum() / masks.sum().clamp_min(1.0)


def reinforce_loss(policy: nn.Module) -> Callable[[Params, PolicyBatch], Tensor]:
    """The inner loss: REINFORCE with (baseline-subtracted) advantages, ``-E[log pi(a|s) A]``."""

    def loss(params: Params, batch: PolicyBatch) -> Tensor:
        log_probs = distribution(policy, params, batch.observations).log_prob(batch.actions)
        return -masked_mean(log_probs * batch.advantages, batch.masks)

    return loss


def surrogate_loss(dist: Distribution, batch: PolicyBatch, clip: float | None = None) -> Tensor:
    """The importance-sampled surrogate ``-E[r A]`` with ``r = pi(a|s) / pi_old(a|s)``.

    ``pi_old`` is the policy that sampled the batch (its ``log_probs``). With ``clip`` this is
    PPO's pessimistic clipped objective ``-E[min(r A, clip(r, 1-eps, 1+eps) A)]``.
    """
    ratio = torch.exp(dist.log_prob(batch.actions) - batch.log_probs)
    objective = ratio * batch.advantages
    if clip is not None:
        clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * batch.advantages
        objective = torch.minimum(objective, clipped)
    return -masked_mean(objective, batch.masks)


def mean_kl(old: Distribution, new: Distribution, masks: Tensor) -> Tensor:
    """``E[KL(old || new)]`` over valid steps."""
    return masked_mean(old.kl(new), masks)
