"""Discounted returns, generalised advantage estimates and advantage normalisation.

All functions take padded ``[T, E, H]`` batches (task, episode, time) with step masks that are
1 for the first ``length`` steps of each episode and 0 after, and are vectorised over tasks and
episodes; only the recursion over time is a Python loop. Padding steps come out as 0, whatever
the padded rewards or values contain.

Episode ends are never bootstrapped: the value after an episode's last valid step counts as 0,
whether the episode terminated or was truncated at the horizon ``H``. This is the convention of
the MAML paper's code (rllab appends a 0 to each path's baselines), which reproducing its
numbers needs; it treats the time limit as part of the task.
"""

from __future__ import annotations

import torch


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raises a ValueError naming the arguments if their shapes differ or are not 3-D."""
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) != 1 or any(len(shape) != 3 for shape in shapes.values()):
        raise ValueError(f"expected tensors of one shape [T, E, H], got {shapes}")


def _discounted_sum_backwards(
    terms: torch.Tensor, masks: torch.Tensor, decay: float
) -> torch.Tensor:
    """``y_t = m_t * (x_t + decay * y_{t+1})`` with ``y_H = 0``, along the last axis."""
    out = torch.empty_like(terms)
    running = torch.zeros_like(terms[..., 0])
    for t in range(terms.shape[-1] - 1, -1, -1):
        running = masks[..., t] * (terms[..., t] + decay * running)
        out[..., t] = running
    return out


def discounted_returns(rewards: torch.Tensor, masks: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go ``R_t = sum_{k>=t} gamma^(k-t) r_k`` over each episode's valid steps.

    Args:
        rewards: ``[T, E, H]`` rewards; padding entries are ignored.
        masks: ``[T, E, H]`` step masks (1 valid, 0 padding).
        gamma: Discount factor.

    Returns:
        ``[T, E, H]`` returns, 0 at padding steps.

    Raises:
        ValueError: If the shapes differ or are not ``[T, E, H]``.
    """
    _check_same_shape(rewards=rewards, masks=masks)
    return _discounted_sum_backwards(torch.where(masks > 0, rewards, 0.0), masks, gamma)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    masks: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) over each episode's valid steps.

    ``A_t = sum_{k>=t} (gamma * lam)^(k-t) delta_k`` with TD errors
    ``delta_t = r_t + gamma * V_{t+1} - V_t``, where ``V_{t+1} = 0`` after the last valid step
    (no bootstrapping, see the module docstring). ``lam = 1`` gives returns minus values, the
    paper's setting; ``lam = 0`` gives the one-step TD errors.

    Args:
        rewards: ``[T, E, H]`` rewards; padding entries are ignored.
        values: ``[T, E, H]`` value estimates (e.g. a fitted baseline); padding entries are
            ignored.
        masks: ``[T, E, H]`` step masks (1 valid, 0 padding).
        gamma: Discount factor.
        lam: GAE bias-variance parameter in ``[0, 1]``.

    Returns:
        ``[T, E, H]`` advantages, 0 at padding steps.

    Raises:
        ValueError: If the shapes differ or are not ``[T, E, H]``.
    """
    _check_same_shape(rewards=rewards, values=values, masks=masks)
    valid = masks > 0
    values = torch.where(valid, values, 0.0)
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = torch.where(valid, rewards, 0.0) + gamma * next_values - values
    return _discounted_sum_backwards(deltas, masks, gamma * lam)


def normalize_advantages(
    advantages: torch.Tensor, masks: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Advantages shifted and scaled to zero mean and unit standard deviation within each task.

    Statistics are taken per task over its valid steps only (as in MAML's reference PyTorch
    implementation), so each task's inner gradient step has a comparable scale. The standard
    deviation is the population one; ``eps`` is added to it to keep constant advantages finite.

    Args:
        advantages: ``[T, E, H]`` advantages.
        masks: ``[T, E, H]`` step masks (1 valid, 0 padding).
        eps: Added to the standard deviation before dividing.

    Returns:
        ``[T, E, H]`` normalised advantages, 0 at padding steps (and everywhere in a task
        without valid steps).

    Raises:
        ValueError: If the shapes differ or are not ``[T, E, H]``.
    """
    _check_same_shape(advantages=advantages, masks=masks)
    valid = masks > 0
    count = valid.sum(dim=(1, 2), keepdim=True).clamp_min(1).to(advantages.dtype)
    centred = torch.where(valid, advantages, 0.0)
    centred = torch.where(valid, centred - centred.sum(dim=(1, 2), keepdim=True) / count, 0.0)
    std = (centred.square().sum(dim=(1, 2), keepdim=True) / count).sqrt()
    return centred / (std + eps)
