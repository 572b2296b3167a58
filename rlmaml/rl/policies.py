"""Policies: MLPs mapping observations to an action distribution, evaluated functionally.

A policy is an ordinary ``nn.Module`` whose ``forward(obs)`` returns a distribution pytree
(:class:`~rlmaml.rl.distributions.DiagGaussian` or ``Categorical``). :func:`distribution`
evaluates it with a parameter dict; :func:`per_task_distribution` with a *stack* of parameter
dicts (leading task axis), so one batched forward pass acts for every task with its own
adapted parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from rlmaml.core import Params, functional_forward
from rlmaml.rl.distributions import Categorical, DiagGaussian, Distribution

Init = Literal["xavier", "torch"]


def mlp(
    sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, init: Init = "xavier"
) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none at the end).

    ``init="xavier"`` is the paper code's (rllab) initialisation: Xavier-uniform weights and
    zero biases. It matters for MAML: the initial sensitivity of the network to an inner step
    depends on it (with PyTorch's default, the first layer's weights are about three times
    larger for a 2-D input). ``init="torch"`` keeps ``nn.Linear``'s default.
    """
    if init not in ("xavier", "torch"):
        raise ValueError(f"init must be 'xavier' or 'torch', got {init!r}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        if init == "xavier":
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianMLPPolicy(nn.Module):
    """Gaussian policy: an MLP for the mean and a learned, state-independent log-std.

    The MAML paper's locomotion and navigation policy (two hidden layers of 100 ReLU units).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (100, 100),
        init_std: float = 1.0,
        init: Init = "xavier",
    ) -> None:
        super().__init__()
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.mean = mlp([obs_dim, *hidden, act_dim], init=init)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(torch.tensor(init_std).log())))

    def forward(self, obs: Tensor) -> DiagGaussian:
        mean = self.mean(obs)
        return DiagGaussian(mean, self.log_std.expand_as(mean))


class CategoricalMLPPolicy(nn.Module):
    """Categorical policy over ``n_actions`` discrete actions: an MLP producing logits."""

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden: Sequence[int] = (100, 100),
        init: Init = "xavier",
    ) -> None:
        super().__init__()
        self.logits = mlp([obs_dim, *hidden, n_actions], init=init)

    def forward(self, obs: Tensor) -> Categorical:
        return Categorical(self.logits(obs))


def distribution(policy: nn.Module, params: Params, obs: Tensor) -> Distribution:
    """The action distribution of ``policy`` with parameters ``params`` at ``obs``."""
    return functional_forward(policy, params, obs)


def per_task_distribution(policy: nn.Module, stacked: Params, obs: Tensor) -> Distribution:
    """Distributions for ``obs [T, ..., obs_dim]``, task ``i`` using parameters ``stacked[.][i]``.

    The MLP policies of this module take a batched-matrix-multiply path (one ``baddbmm`` per
    layer: the same numbers as ``vmap`` at a fraction of its per-call overhead, which matters
    once per time step in a sampler); any other policy module is ``vmap``-ed.
    """
    if isinstance(policy, GaussianMLPPolicy):
        mean = _per_task_mlp(policy.mean, "mean", stacked, obs)
        log_std = stacked["log_std"]
        log_std = log_std.reshape(log_std.shape[0], *[1] * (mean.dim() - 2), log_std.shape[-1])
        return DiagGaussian(mean, log_std.expand_as(mean))
    if isinstance(policy, CategoricalMLPPolicy):
        return Categorical(_per_task_mlp(policy.logits, "logits", stacked, obs))
    return torch.func.vmap(lambda p, o: functional_forward(policy, p, o))(stacked, obs)


def _per_task_mlp(layers: nn.Sequential, prefix: str, stacked: Params, x: Tensor) -> Tensor:
    """``layers`` (Linear and activations, as built by :func:`mlp`) with per-task weights."""
    shape = x.shape
    x = x.reshape(shape[0], -1, shape[-1])
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            weight = stacked[f"{prefix}.{index}.weight"]
            bias = stacked[f"{prefix}.{index}.bias"]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        else:
            x = layer(x)
    return x.reshape(*shape[:-1], x.shape[-1])
