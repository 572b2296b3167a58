"""Policy-gradient losses for one task, written for the MAML core (``task_loss(params, data)``).

Every function takes one task's data (no task axis: ``[episode, time, ...]``) so the core can
map it over tasks with ``vmap``. Means are over valid (unmasked) time steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rlmaml.core import Params
from rlmaml.rl.distributions import Distribution
from rlmaml.rl.policies import distribution


class PolicyBatch(NamedTuple):
    """What a policy-gradient loss needs from sampled episodes (task axis first, if any)."""

    observations: Tensor
    actions: Tensor
    advantages: Tensor
    log_probs: Tensor
    masks: Tensor


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
