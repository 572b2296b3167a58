"""Action distributions as pytrees of tensors, with closed-form log-probability and KL.

``torch.distributions`` objects are not pytrees and validate their arguments, which gets in the
way of ``torch.func.vmap``; these small NamedTuples hold only tensors, so a policy evaluated
under ``vmap`` (one parameter set per task) can return them, and every formula is written out.

Sampling takes its randomness as an explicit noise tensor rather than a generator: a sampler
draws the noise of a whole phase ``[task, episode, time]`` from the phase's seed up front, so
the trajectories do not depend on how episodes are split between environments or processes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


class DiagGaussian(NamedTuple):
    """A Gaussian with diagonal covariance; ``log_std`` broadcasts against ``mean``."""

    mean: Tensor
    log_std: Tensor

    def sample(self, noise: Tensor) -> Tensor:
        """The action for standard-normal ``noise`` of the mean's shape (reparameterised)."""
        return self.mean + noise * self.log_std.exp()

    @staticmethod
    def noise(shape: tuple[int, ...], act_dim: int, generator: torch.Generator) -> Tensor:
        """Standard-normal noise for ``shape`` actions (drawn up front, see the module doc)."""
        return torch.randn((*shape, act_dim), generator=generator)

    def log_prob(self, actions: Tensor) -> Tensor:
        """Log-density of ``actions``, summed over the action dimension."""
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - 0.5 * _LOG_2PI).sum(-1)

    def kl(self, other: DiagGaussian) -> Tensor:
        """``KL(self || other)``, summed over the action dimension."""
        var_ratio = torch.exp(2.0 * (self.log_std - other.log_std))
        mean_term = ((self.mean - other.mean) * torch.exp(-other.log_std)) ** 2
        return 0.5 * (var_ratio + mean_term - 1.0).sum(-1) + (other.log_std - self.log_std).sum(-1)

    def fisher_product(self, tangent: DiagGaussian) -> DiagGaussian:
        """Fisher information of this distribution's parameters applied to ``tangent``.

        It is the Hessian of ``KL(self || q)`` with respect to ``q``'s ``(mean, log_std)`` at
        ``q = self``, per sample: ``1 / sigma^2`` on the mean and 2 on the log-std.
        """
        return DiagGaussian(tangent.mean * torch.exp(-2.0 * self.log_std), 2.0 * tangent.log_std)

    def entropy(self) -> Tensor:
        return (self.log_std + 0.5 * (1.0 + _LOG_2PI)).expand_as(self.mean).sum(-1)

    def detach(self) -> DiagGaussian:
        return DiagGaussian(self.mean.detach(), self.log_std.detach())


class Categorical(NamedTuple):
    """A categorical distribution over the last axis of ``logits``."""

    logits: Tensor

    def sample(self, noise: Tensor) -> Tensor:
        """The action for uniform ``noise`` in [0, 1) (inverse-CDF sampling), one per row."""
        cdf = self.logits.softmax(-1).cumsum(-1)
        index = torch.searchsorted(cdf, noise.unsqueeze(-1).to(cdf.dtype)).squeeze(-1)
        return index.clamp_max(self.logits.shape[-1] - 1)

    @staticmethod
    def noise(shape: tuple[int, ...], act_dim: int, generator: torch.Generator) -> Tensor:
        """Uniform noise for ``shape`` actions; ``act_dim`` is unused (one draw per action)."""
        del act_dim
        return torch.rand(shape, generator=generator)

    def log_prob(self, actions: Tensor) -> Tensor:
        log_p = self.logits.log_softmax(-1)
        return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def kl(self, other: Categorical) -> Tensor:
        log_p, log_q = self.logits.log_softmax(-1), other.logits.log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    def fisher_product(self, tangent: Categorical) -> Categorical:
        """Fisher information with respect to the logits applied to ``tangent``, per sample:
        ``(diag(p) - p p^T) t``, the Hessian of ``KL(self || q)`` in ``q``'s logits at ``self``.
        """
        p = self.logits.softmax(-1)
        return Categorical(p * (tangent.logits - (p * tangent.logits).sum(-1, keepdim=True)))

    def entropy(self) -> Tensor:
        log_p = self.logits.log_softmax(-1)
        return -(log_p.exp() * log_p).sum(-1)

    def detach(self) -> Categorical:
        return Categorical(self.logits.detach())


Distribution = DiagGaussian | Categorical
