"""MAML for policies: the adapted policy of every task as a function of the meta-parameters.

The outer objectives (TRPO, PPO-clip, Adam) all need the same three things, computed here for a
whole meta-batch at once by the MAML core (``vmap`` over tasks or a loop):

* the adapted parameters ``theta_i(theta)``: one REINFORCE step per inner step, each on the
  trajectories that were sampled with the previous step's parameters;
* the post-adaptation surrogate loss and KL divergence on the query trajectories;
* Fisher-vector products of that KL, for TRPO's conjugate gradient.

The Fisher-vector product uses the exact Gauss-Newton form ``F v = J^T M J v``: at the sampling
policy the KL's gradient vanishes, so its Hessian is the Jacobian ``J`` of the query action
distributions (through the inner step) sandwiched around the distributions' own Fisher ``M``.
One forward-mode and one reverse-mode pass replace the double backward through the inner step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlmaml.core import Params, adapt, map_tasks
from rlmaml.rl.distributions import Distribution
from rlmaml.rl.losses import PolicyBatch, mean_kl, reinforce_loss, surrogate_loss
from rlmaml.rl.policies import distribution


@dataclass(frozen=True)
class OuterBatch:
    """A meta-iteration's data: per inner step the support batch, then the query batch.

    All tensors carry the task axis first. ``behaviour`` is the (detached) action distribution
    of the adapted policies that sampled ``query``, on the query observations.
    """

    supports: tuple[PolicyBatch, ...]
    query: PolicyBatch
    behaviour: Distribution


class PolicyMAML:
    """Adapted policies, post-adaptation losses and Fisher products for a meta-batch.

    Args:
        policy: the policy module (evaluated functionally).
        inner_lr: the inner step size ``alpha`` (the same at every inner step in training).
        first_order: treat inner gradients as constants (first-order MAML).
        vectorize: adapt tasks with ``vmap`` (True) or a loop over tasks (False).
    """

    def __init__(
        self, policy: nn.Module, inner_lr: float, first_order: bool = False, vectorize: bool = True
    ) -> None:
        self.policy = policy
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.vectorize = vectorize
        self._inner_loss = reinforce_loss(policy)

    def adapt_one(
        self, params: Params, supports: Sequence[PolicyBatch], lrs: Sequence[float] | None = None
    ) -> Params:
        """One task's adapted parameters: an inner step on each support batch in turn."""
        lrs = [self.inner_lr] * len(supports) if lrs is None else lrs
        for batch, lr in zip(supports, lrs, strict=True):
            params = adapt(
                params,
                lambda p, b=batch: self._inner_loss(p, b),
                steps=1,
                lr=lr,
                first_order=self.first_order,
            )
        return params

    def adapted(
        self, params: Params, supports: Sequence[PolicyBatch], lrs: Sequence[float] | None = None
    ) -> Params:
        """Adapted parameters of every task, stacked (task axis first)."""
        return map_tasks(
            lambda sup: self.adapt_one(params, sup, lrs), tuple(supports), vectorize=self.vectorize
        )

    def query_distribution(self, params: Params, batch: OuterBatch) -> Distribution:
        """Each task's adapted action distribution on its query observations."""

        def one_task(supports: tuple[PolicyBatch, ...], obs: Tensor) -> Distribution:
            return distribution(self.policy, self.adapt_one(params, supports), obs)

        return map_tasks(
            one_task, batch.supports, batch.query.observations, vectorize=self.vectorize
        )

    def surrogate_and_kl(
        self, params: Params, batch: OuterBatch, clip: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """Post-adaptation surrogate loss and ``KL(behaviour || adapted)``, averaged over tasks."""

        def one_task(
            supports: tuple[PolicyBatch, ...], query: PolicyBatch, behaviour: Distribution
        ) -> tuple[Tensor, Tensor]:
            dist = distribution(self.policy, self.adapt_one(params, supports), query.observations)
            return surrogate_loss(dist, query, clip), mean_kl(behaviour, dist, query.masks)

        losses, kls = map_tasks(
            one_task, batch.supports, batch.query, batch.behaviour, vectorize=self.vectorize
        )
        return losses.mean(), kls.mean()

    def fisher_vector_product(self, params: Params, batch: OuterBatch, subsample: int = 1):
        """A function ``v -> F v`` for the Hessian ``F`` of the mean KL at ``params``.

        The reverse-mode half (``J^T``) is linearised once and reused for every product.
        ``subsample`` keeps every ``subsample``-th row of every task (an episode, or ``H``
        consecutive steps of a packed batch), in the support and the query batches alike: the
        products then estimate ``F`` from a sample of the data (the losses are means over
        steps), about ``subsample`` times cheaper. TRPO's line search still checks the exact KL
        on the full batch, so the trust region is unaffected.
        """
        if subsample > 1:
            batch = _every_nth_row(batch, subsample)
        masks = batch.query.masks
        weights = masks / (masks.sum(dim=(1, 2), keepdim=True).clamp_min(1.0) * masks.shape[0])
        names = list(params)

        def dist_of(*flat: Tensor) -> Distribution:
            return self.query_distribution(dict(zip(names, flat, strict=True)), batch)

        primal = tuple(params[n].detach() for n in names)
        _, pullback = torch.func.vjp(dist_of, *primal)

        def product(vector: Params) -> Params:
            tangent = tuple(vector[n] for n in names)
            dist, push = torch.func.jvp(dist_of, primal, tangent)
            weighted = dist.fisher_product(push)
            weighted = type(weighted)(*(_weight(t, weights) for t in weighted))
            return dict(zip(names, pullback(weighted), strict=True))

        return product


def _weight(values: Tensor, weights: Tensor) -> Tensor:
    """``values [T, E, H, ...]`` times per-step ``weights [T, E, H]``."""
    return values * weights.reshape(*weights.shape, *([1] * (values.dim() - weights.dim())))


def _every_nth_row(batch: OuterBatch, n: int) -> OuterBatch:
    def thin(t: Tensor) -> Tensor:
        return t[:, ::n]

    def thin_all(group):
        return type(group)(*(thin(t) for t in group))

    return OuterBatch(
        tuple(thin_all(s) for s in batch.supports), thin_all(batch.query), thin_all(batch.behaviour)
    )
