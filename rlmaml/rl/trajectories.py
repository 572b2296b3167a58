"""The batch of sampled episodes passed between samplers, baselines and policy-gradient losses."""

from __future__ import annotations

from typing import NamedTuple

import torch


def masks_from_lengths(
    lengths: torch.Tensor, horizon: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Step masks for episodes of the given lengths, padded to ``horizon`` steps.

    Args:
        lengths: Integer episode lengths, any shape ``[...]``, each in ``[0, horizon]``.
        horizon: Length of the padded time axis.
        dtype: Dtype of the result.

    Returns:
        ``[..., horizon]`` tensor with 1 at steps ``t < length`` and 0 after.
    """
    steps = torch.arange(horizon, device=lengths.device)
    return (steps < lengths.unsqueeze(-1)).to(dtype)


class Trajectories(NamedTuple):
    """Episodes of a meta-batch of tasks, padded to a common horizon.

    Every tensor has the leading axes ``[T, E, H]`` (task, episode, time), so losses and
    baselines handle all tasks at once and the MAML core can map over the task axis (a
    NamedTuple is a pytree, so ``torch.func.vmap`` slices every field along it). Episodes end by
    termination or by truncation at ``H``; the steps after an episode's end are padding, marked
    by ``masks == 0``, and their contents are meaningless.

    Construct it directly and call :meth:`validate` once at the producer (a sampler), not in the
    hot path; it is not validated automatically because per-task slices made by ``vmap`` or
    ``map_tasks`` lose the task axis.

    Attributes:
        observations: Float ``[T, E, H, obs_dim]``, the observation each action was taken in.
        actions: Float ``[T, E, H, act_dim]`` (continuous) or integer ``[T, E, H]`` (discrete).
        rewards: Float ``[T, E, H]``.
        log_probs: Float ``[T, E, H]``, log-probabilities of the actions under the behaviour
            policy that sampled them (for importance ratios, e.g. a PPO-clip objective).
        masks: Float ``[T, E, H]``, 1 for valid steps and 0 after the episode ended.
        lengths: Integer ``[T, E]``, the number of valid steps per episode.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    log_probs: torch.Tensor
    masks: torch.Tensor
    lengths: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks ``T``."""
        return self.observations.shape[0]

    @property
    def num_episodes(self) -> int:
        """Episodes per task ``E``."""
        return self.observations.shape[1]

    @property
    def horizon(self) -> int:
        """Padded episode length ``H``."""
        return self.observations.shape[2]

    @property
    def obs_dim(self) -> int:
        """Observation size."""
        return self.observations.shape[3]

    @property
    def discrete_actions(self) -> bool:
        """Whether actions are integer indices ``[T, E, H]`` rather than vectors."""
        return self.actions.dim() == 3

    def num_steps(self) -> int:
        """Total number of valid steps over all tasks and episodes (synchronises the device)."""
        return int(self.lengths.sum().item())

    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of every episode, ``[T, E]``; padding steps do not count."""
        return (self.rewards * self.masks).sum(dim=-1)

    def mean_return(self) -> torch.Tensor:
        """Average undiscounted return per task ``[T]`` over its non-empty episodes.

        Empty episodes (length 0) pad tasks that hold fewer episodes than others, as batches
        counted in time steps do (see :mod:`rlmaml.rl.step_budget`); they are not episodes.
        """
        real = (self.lengths > 0).to(self.rewards.dtype)
        return (self.episode_returns() * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)

    def to(self, device: torch.device | str) -> Trajectories:
        """Returns a copy with every tensor moved to ``device``.

        Args:
            device: Target device, e.g. ``"cuda"``.

        Returns:
            A new ``Trajectories``; tensors already on ``device`` are shared, not copied.
        """
        return Trajectories(*(tensor.to(device) for tensor in self))

    def validate(self) -> Trajectories:
        """Checks that shapes, dtypes, devices and masks agree, so mistakes fail at the source.

        Returns:
            ``self``, to allow ``Trajectories(...).validate()``.

        Raises:
            ValueError: Naming the first inconsistent field: a field that is not a tensor, a
                shape that does not match ``[T, E, H(, dim)]``, a wrong dtype (float fields,
                integer lengths and discrete actions), a field on another device, lengths
                outside ``[0, H]``, or masks that differ from those implied by ``lengths``.
        """
        for name, value in zip(self._fields, self, strict=True):
            if not torch.is_tensor(value):
                raise ValueError(f"Trajectories.{name} must be a tensor, got {type(value)}")
        if self.observations.dim() != 4:
            raise ValueError(
                "Trajectories.observations must have shape [T, E, H, obs_dim], got "
                f"{tuple(self.observations.shape)}"
            )
        leading = tuple(self.observations.shape[:3])
        for name in ("rewards", "log_probs", "masks"):
            shape = tuple(getattr(self, name).shape)
            if shape != leading:
                raise ValueError(f"Trajectories.{name} must have shape {leading}, got {shape}")
        actions = self.actions
        if actions.dim() not in (3, 4) or tuple(actions.shape[:3]) != leading:
            raise ValueError(
                f"Trajectories.actions must have shape {leading} (discrete) or "
                f"{leading + ('act_dim',)} (continuous), got {tuple(actions.shape)}"
            )
        if actions.dim() == 3 and (actions.is_floating_point() or actions.is_complex()):
            raise ValueError(
                f"Trajectories.actions of shape {leading} are discrete and must be an integer "
                f"tensor, got {actions.dtype}"
            )
        if actions.dim() == 4 and not actions.is_floating_point():
            raise ValueError(
                f"Trajectories.actions with an action axis must be floating point, got "
                f"{actions.dtype}"
            )
        for name in ("observations", "rewards", "log_probs", "masks"):
            dtype = getattr(self, name).dtype
            if not dtype.is_floating_point:
                raise ValueError(f"Trajectories.{name} must be floating point, got {dtype}")
        lengths = self.lengths
        if tuple(lengths.shape) != leading[:2]:
            raise ValueError(
                f"Trajectories.lengths must have shape {leading[:2]}, got {tuple(lengths.shape)}"
            )
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(f"Trajectories.lengths must be an integer tensor, got {lengths.dtype}")
        for name, value in zip(self._fields, self, strict=True):
            if value.device != self.observations.device:
                raise ValueError(
                    f"Trajectories.{name} is on {value.device}, observations on "
                    f"{self.observations.device}"
                )
        horizon = leading[2]
        if lengths.numel() and bool(((lengths < 0) | (lengths > horizon)).any()):
            raise ValueError(f"Trajectories.lengths must lie in [0, {horizon}]")
        if not torch.equal(self.masks, masks_from_lengths(lengths, horizon, self.masks.dtype)):
            raise ValueError(
                "Trajectories.masks must be 1 for the first `lengths` steps of each episode and 0 "
                "after"
            )
        return self
