"""Samplers: run a policy with one parameter set per task and return padded trajectories.

Sampling is a backend behind one interface, :class:`Sampler`: the algorithm asks for
``episodes_per_task`` episodes of every task with that task's (adapted) parameters and gets a
:class:`~rlmaml.rl.trajectories.Trajectories` batch ``[task, episode, time]`` back, whichever
backend ran them. :class:`VectorizedSampler` is the in-process default; multi-process and Ray
backends implement the same interface.

All randomness of a phase is a function of its ``seed`` alone, fixed before any environment
steps, so the trajectories a seed produces do not depend on the backend or on how episodes are
split between environments and workers:

- the action noise of every ``(task, episode, time)`` is drawn up front by
  :func:`action_noise` (the distribution's ``noise`` with ``torch.Generator().manual_seed(seed)``,
  shape ``[T, E, H(, act_dim)]``);
- the environment of episode ``e`` of task ``t`` is reset with :func:`episode_seeds`'s
  ``[t, e]`` entry, derived from ``(seed, t, e)`` only.

A backend that splits a phase by tasks runs each part with :meth:`VectorizedSampler.sample`'s
``first_task`` and ``phase_tasks``, which make it use the whole phase's noise and reset seeds
sliced to its tasks. Padding steps (``masks == 0``) hold zeros in every field, so they do not
depend on which other episodes shared a batch either.

Environments never make backends differ: a natively batched family reproduces its Gymnasium env
bit for bit (see :func:`envs.batched_env_for`). Neither does the policy: a matrix product's
rounding can depend on the shape of the batch and on where a row lies in memory (its alignment),
so a part of a phase evaluates the policy on tensors of the *whole phase's* shape, its own tasks
in their places and zeros elsewhere, exactly as the whole phase would be laid out in one process.
That costs a worker ``phase / part`` times the policy arithmetic, small next to the physics, and
makes the trajectories of a seed the same, bit for bit, whatever the backend or worker count.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from envs import batched_env_for, require_task_family
from envs.protocol import BatchedTaskFamily, Task, TaskFamily
from rlmaml.core.params import Params
from rlmaml.rl.distributions import Distribution
from rlmaml.rl.policies import distribution, per_task_distribution
from rlmaml.rl.trajectories import Trajectories, masks_from_lengths


@runtime_checkable
class Sampler(Protocol):
    """Collects episodes of a meta-batch of tasks, each task acting with its own parameters.

    Backends (in-process, multi-process, Ray) implement :meth:`sample` and :meth:`close`;
    subclassing this protocol explicitly also gives them context-manager support, so
    ``with VectorizedSampler(...) as sampler:`` releases environments and workers on exit.
    """

    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        episodes_per_task: int,
        seed: int,
        *,
        episode_counts: Sequence[int] | None = None,
    ) -> Trajectories:
        """Run ``episodes_per_task`` episodes of every task and return them padded.

        Args:
            params: stacked per-task parameters: every tensor has a leading task axis of
                length ``len(tasks)``. Callers with one shared set pass
                ``expand_params(params, len(tasks))``.
            tasks: the tasks, as the task family's JSON-able dicts.
            episodes_per_task: episodes ``E`` per task, at least 1.
            seed: non-negative seed fixing all randomness of the phase (action noise and
                environment resets), independent of the backend.
            episode_counts: run only the first ``episode_counts[t]`` (1 to ``E``) of task
                ``t``'s episodes; its other ``E`` slots are returned as empty episodes (length
                0). The episodes that run are those of the full phase, bit for bit. None runs
                all ``E``.

        Returns:
            Validated trajectories ``[T, E, H]`` with ``H`` the environment's time limit;
            every field is 0 at padding steps (``masks == 0``).
        """
        ...

    def close(self) -> None:
        """Release environments and workers; the sampler cannot be used afterwards."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def episode_seeds(seed: int, num_tasks: int, episodes_per_task: int) -> np.ndarray:
    """The reset seed of every episode of a phase, each derived from ``(seed, task, episode)``.

    Independent of how episodes are assigned to environments, so every backend resets episode
    ``(t, e)`` identically.

    Returns:
        ``[num_tasks, episodes_per_task]`` uint32 seeds.
    """
    seeds = np.zeros((num_tasks, episodes_per_task), dtype=np.uint32)
    for t in range(num_tasks):
        for e in range(episodes_per_task):
            seeds[t, e] = np.random.SeedSequence([seed, t, e]).generate_state(1)[0]
    return seeds


def action_noise(
    distribution_type: type[Distribution],
    shape: tuple[int, int, int],
    act_dim: int,
    seed: int,
) -> Tensor:
    """All the action noise of a phase ``[T, E, H(, act_dim)]``, drawn on the CPU from ``seed``.

    Args:
        distribution_type: the policy's distribution class; its static ``noise`` decides the
            kind of noise (standard normal for a Gaussian, uniform for a categorical).
        shape: ``(T, E, H)``.
        act_dim: size of an action vector (ignored by discrete distributions).
        seed: the phase's seed.
    """
    generator = torch.Generator().manual_seed(seed)
    return distribution_type.noise(shape, act_dim, generator)


def _space_sizes(env: gymnasium.Env) -> tuple[int, int]:
    """``(obs_dim, act_dim)`` of ``env``, checking the spaces are ones a sampler can batch."""
    obs_space, act_space = env.observation_space, env.action_space
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__qualname__
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"samplers need a flat Box observation space, got {obs_space} for {name}")
    if isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        return obs_space.shape[0], act_space.shape[0]
    if isinstance(act_space, spaces.Discrete):
        return obs_space.shape[0], 1
    raise ValueError(
        f"samplers need a flat Box or a Discrete action space, got {act_space} for {name}"
    )


class _NativeBatchedEnvs:
    """One copy of a natively batched family per episode of a phase, stepped together.

    Navigation2D steps in one NumPy call; the MuJoCo locomotion families run the simulator
    for all copies in one ``mujoco.rollout`` call or one call per copy, and everything else
    in NumPy (see :mod:`envs.batched_locomotion`). Either way no
    Gymnasium env, wrapper or ``info`` dict is involved per step.

    Args:
        batched_type: the :class:`~envs.protocol.BatchedTaskFamily` class from
            :func:`envs.batched_env_for`.
        env: the family's registered env from ``gymnasium.make``, whose configuration and time
            limit the batched copies take over.
    """

    def __init__(self, batched_type: type[BatchedTaskFamily], env: gymnasium.Env) -> None:
        self._env = env
        self._batched = batched_type.from_env(env)
        self.obs_dim, self.act_dim = _space_sizes(env)
        self.horizon: int = self._batched.horizon

    @property
    def active(self) -> np.ndarray:
        """Bool ``[N]``: copies whose next step is a real transition."""
        return self._batched.active

    def reset(self, tasks: Sequence[Task], seeds: np.ndarray) -> np.ndarray:
        """Start one episode per copy: copy ``i`` runs ``tasks[i]`` reset with ``seeds[i]``.

        Returns:
            float32 observations ``[N, obs_dim]``, rounded as the Gymnasium pool's buffer does.
        """
        observations = self._batched.reset_tasks(list(tasks), seeds)
        return np.asarray(observations, dtype=np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every copy; returns float32 observations ``[N, obs_dim]`` and rewards ``[N]``."""
        observations, rewards, _, _ = self._batched.step(actions)
        return np.asarray(observations, dtype=np.float32), rewards

    def close(self) -> None:
        self._env.close()


class _GymnasiumEnvs:
    """A pool of ordinary Gymnasium envs, stepped one by one (the env step is Python anyway).

    The pool grows to the most episodes a phase asked for and is reused across phases.

    Args:
        env_id: the Gymnasium id of a task family.
        env_kwargs: keyword arguments for ``gymnasium.make``.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any]) -> None:
        self._env_id = env_id
        self._env_kwargs = env_kwargs
        self._envs: list[gymnasium.Env] = []
        self._families: list[TaskFamily] = []
        self._grow(1)
        first = self._envs[0]
        self.obs_dim, self.act_dim = _space_sizes(first)
        horizon = first.spec.max_episode_steps if first.spec is not None else None
        if horizon is None:
            raise ValueError(
                f"{env_id} has no time limit (spec.max_episode_steps); register it with "
                "max_episode_steps or pass max_episode_steps in env_kwargs"
            )
        self.horizon: int = horizon
        self._observations = np.zeros((0, self.obs_dim), dtype=np.float32)
        self._active = np.zeros(0, dtype=bool)

    def _grow(self, n: int) -> None:
        while len(self._envs) < n:
            env = gymnasium.make(self._env_id, **self._env_kwargs)
            self._envs.append(env)
            self._families.append(require_task_family(env))

    @property
    def active(self) -> np.ndarray:
        """Bool ``[N]``: envs whose episode has not ended yet."""
        return self._active

    def reset(self, tasks: Sequence[Task], seeds: np.ndarray) -> np.ndarray:
        """Set env ``i`` to ``tasks[i]`` and reset it with ``seeds[i]``, one env per episode."""
        n = len(tasks)
        self._grow(n)
        self._observations = np.zeros((n, self.obs_dim), dtype=np.float32)
        for i in range(n):
            self._families[i].set_task(tasks[i])
            self._observations[i], _ = self._envs[i].reset(seed=int(seeds[i]))
        self._active = np.ones(n, dtype=bool)
        return self._observations

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step the envs still running; ended ones keep their last observation and get reward 0.

        Returns:
            Observations ``[N, obs_dim]`` (a buffer overwritten by the next step) and float64
            rewards ``[N]``.
        """
        rewards = np.zeros(len(self._active))
        for i in np.flatnonzero(self._active):
            observation, reward, terminated, truncated, _ = self._envs[i].step(actions[i])
            self._observations[i] = observation
            rewards[i] = reward
            if terminated or truncated:
                self._active[i] = False
        return self._observations, rewards

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs.clear()
        self._families.clear()


def shared_params(params: Params) -> Params | None:
    """The one parameter set behind ``params`` if they come from ``expand_params``, else None.

    ``expand_params`` output has stride 0 along the task axis, whatever the number of tasks
    (as do slices of it that a backend hands to a worker); such shared parameters skip ``vmap``
    and act with one plain forward pass, which gives the same numbers up to rounding at a
    fraction of the overhead. The stride is the marker on purpose: comparing values would send a
    single task of a phase with distinct parameters down the plain path, while the whole phase
    ran through ``vmap``.
    """
    if all(t.stride(0) == 0 for t in params.values()):
        return {name: t[0] for name, t in params.items()}
    return None


class VectorizedSampler(Sampler):
    """The in-process sampler: all ``T * E`` episodes of a phase run in lockstep.

    Each time step evaluates the policy once for every episode (one ``vmap``-ed forward over
    the task axis, or one plain forward when all tasks share parameters) and then steps the
    environments: a natively batched family (see :func:`envs.batched_env_for`: Navigation2D and
    the MuJoCo locomotion families) all copies together, any other task family as a pool of
    Gymnasium envs stepped in a Python loop. Actions go to the environment as sampled
    (environments clip); the trajectories record the sampled action and its log-probability
    under the behaviour policy, and hold zeros at padding steps.

    Args:
        env_id: a registered Gymnasium id of a task family (``rlmaml/Navigation2D-v0``, ...).
        policy: the policy module; its ``forward(obs)`` returns a distribution pytree. The
            parameters used are the ones passed to :meth:`sample` (tensors they do not name
            come from the module).
        env_kwargs: keyword arguments for ``gymnasium.make(env_id, ...)``.
        device: where the policy runs and the trajectories are returned; environments always
            run on the CPU.
        use_batched: use the natively batched implementation when the family has one. False
            forces the Gymnasium pool; both give the same trajectories for the same seed.
        num_threads: torch intra-op threads while sampling (restored afterwards), or None to
            leave torch's setting alone. The per-step matrix products are small, and splitting
            them across threads loses badly when the cores are shared with other work (a
            learner, other runs): on 2 busy cores 2 threads sampled 100 times slower than 1.

    Raises:
        ValueError: if ``env_id`` is not registered, has no time limit, or has spaces that are
            not a flat Box (observations) and a flat Box or Discrete (actions), or if
            ``num_threads < 1``.
        TypeError: if the environment is not a task family.
    """

    def __init__(
        self,
        env_id: str,
        policy: nn.Module,
        env_kwargs: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        use_batched: bool = True,
        num_threads: int | None = 1,
    ) -> None:
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be at least 1 or None, got {num_threads}")
        self.env_id = env_id
        self.num_threads = num_threads
        self.policy = policy
        self.device = torch.device(device)
        env_kwargs = dict(env_kwargs or {})
        batched_type = batched_env_for(env_id)
        if use_batched and batched_type is not None:
            self._envs: _NativeBatchedEnvs | _GymnasiumEnvs = _NativeBatchedEnvs(
                batched_type, gymnasium.make(env_id, **env_kwargs)
            )
        else:
            self._envs = _GymnasiumEnvs(env_id, env_kwargs)

    @property
    def horizon(self) -> int:
        """The episode length ``H`` of the returned trajectories (the env's time limit)."""
        return self._envs.horizon

    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        episodes_per_task: int,
        seed: int,
        *,
        episode_counts: Sequence[int] | None = None,
        first_task: int = 0,
        phase_tasks: int | None = None,
    ) -> Trajectories:
        """Run ``episodes_per_task`` episodes of every task; see :meth:`Sampler.sample`.

        By default ``tasks`` are a whole phase. A backend that splits a phase of
        ``phase_tasks`` tasks by tasks passes each part as tasks ``first_task`` to
        ``first_task + len(tasks) - 1`` of it: the part then acts with the phase's action noise
        ``action_noise(..., (phase_tasks, E, H), ..., seed)[first_task:first_task + T]``,
        resets with ``episode_seeds(seed, phase_tasks, E)[first_task:first_task + T]`` and
        evaluates the policy laid out as the whole phase (see the module docstring), so the
        parts together equal sampling the phase whole, bit for bit.

        Args:
            params: as for :meth:`Sampler.sample`, stacked for ``tasks`` only.
            tasks: the tasks to run.
            episodes_per_task: episodes ``E`` per task (of the whole phase, for a part).
            seed: the phase's seed.
            episode_counts: episodes to run of each of ``tasks`` (the first ones), as for
                :meth:`Sampler.sample`; None runs all ``E``.
            first_task: index in the phase of ``tasks[0]``.
            phase_tasks: number of tasks of the whole phase; None means ``tasks`` are the whole
                phase (then ``first_task`` must be 0).

        Raises:
            ValueError: if ``tasks`` is empty, the parameters' task axis is not ``len(tasks)``,
                ``episodes_per_task < 1``, ``seed`` is negative, ``episode_counts`` is not one
                count from 1 to ``E`` per task, ``first_task`` is negative, or ``tasks`` do
                not fit in the phase (``first_task + len(tasks) > phase_tasks``, or
                ``first_task != 0`` without ``phase_tasks``).
        """
        counts = check_request(params, len(tasks), episodes_per_task, seed, episode_counts)
        if first_task < 0:
            raise ValueError(f"first_task must be non-negative, got {first_task}")
        if phase_tasks is None:
            if first_task != 0:
                raise ValueError(
                    f"first_task={first_task} needs phase_tasks, the number of tasks of the "
                    "whole phase"
                )
            phase_tasks = len(tasks)
        elif first_task + len(tasks) > phase_tasks:
            raise ValueError(
                f"tasks {first_task} to {first_task + len(tasks) - 1} do not fit in a phase of "
                f"phase_tasks = {phase_tasks} tasks"
            )
        rollout = (params, tasks, episodes_per_task, counts, seed, first_task, phase_tasks)
        threads = torch.get_num_threads()
        if self.num_threads is None or self.num_threads == threads:
            return self._rollout(*rollout)
        torch.set_num_threads(self.num_threads)
        try:
            return self._rollout(*rollout)
        finally:
            torch.set_num_threads(threads)

    def _rollout(
        self,
        params: Params,
        tasks: Sequence[Task],
        episodes_per_task: int,
        counts: np.ndarray | None,
        seed: int,
        first_task: int,
        phase_tasks: int,
    ) -> Trajectories:
        """:meth:`sample` after its checks, with torch's thread count already set.

        Slot ``t * E + e`` of the flat ``[T * E]`` layout holds episode ``e`` of task ``t``;
        ``run`` selects the slots whose episodes run, one environment copy each (a plain slice
        when all run, so the common case costs no gather).
        """
        num_tasks = len(tasks)
        part = slice(first_task, first_task + num_tasks)
        envs, device = self._envs, self.device
        horizon, episodes, n = envs.horizon, episodes_per_task, num_tasks * episodes_per_task
        run: slice | np.ndarray = slice(None)
        if counts is not None and (counts < episodes).any():
            run = np.flatnonzero(np.arange(episodes) < counts[:, None])
        run_tensor = run if isinstance(run, slice) else torch.from_numpy(run).to(device)
        shared = shared_params(params)
        if shared is not None:
            shared = {name: t.to(device) for name, t in shared.items()}
        else:
            params = _in_phase_layout(params, part, phase_tasks, device)
        # The policy's input, laid out as the whole phase (this part's tasks in their places).
        phase_obs = torch.zeros((phase_tasks, episodes, envs.obs_dim), device=device)

        observations = torch.zeros(
            (num_tasks, episodes, horizon, envs.obs_dim), dtype=torch.float32, device=device
        )
        log_probs = torch.zeros((num_tasks, episodes, horizon), dtype=torch.float32, device=device)
        rewards = np.zeros((n, horizon), dtype=np.float32)
        lengths = np.zeros(n, dtype=np.int64)
        actions: Tensor | None = None
        noise: Tensor | None = None

        slot_tasks = np.repeat(np.arange(num_tasks), episodes)[run]
        slot_seeds = episode_seeds(seed, phase_tasks, episodes)[part].ravel()[run]
        env_observations = envs.reset([tasks[i] for i in slot_tasks], slot_seeds)
        with torch.inference_mode():
            for t in range(horizon):
                active = envs.active
                if not active.any():
                    break
                lengths[run] += active
                obs = phase_obs[part]
                obs.view(n, -1)[run_tensor] = torch.from_numpy(env_observations)
                if shared is not None:
                    dist = distribution(self.policy, shared, phase_obs)
                else:
                    dist = per_task_distribution(self.policy, params, phase_obs)
                dist = type(dist)(*(field[part] for field in dist))
                if noise is None:
                    # The distribution type is known after the first forward pass; the noise of
                    # the whole phase is drawn now, from the phase seed alone.
                    shape = (phase_tasks, episodes, horizon)
                    noise = action_noise(type(dist), shape, envs.act_dim, seed)[part]
                    noise = noise.to(device).movedim(2, 0).contiguous()
                action = dist.sample(noise[t])
                if actions is None:
                    with torch.inference_mode(False):
                        actions = torch.zeros(
                            (num_tasks, episodes, horizon, *action.shape[2:]),
                            dtype=action.dtype,
                            device=device,
                        )
                observations[:, :, t] = obs
                actions[:, :, t] = action
                log_probs[:, :, t] = dist.log_prob(action)
                env_actions = action.reshape(n, *action.shape[2:])[run_tensor].cpu().numpy()
                env_observations, step_rewards = envs.step(env_actions)
                rewards[run, t] = step_rewards
        assert actions is not None  # the first step always runs: every episode starts active
        lengths_tensor = torch.from_numpy(lengths).view(num_tasks, episodes).to(device)
        masks = masks_from_lengths(lengths_tensor, horizon)
        # Steps after an episode's end were recorded while others of the batch still ran (stale
        # observations, actions and their log-probabilities): zero them, so padding does not
        # depend on which episodes shared the batch. Rewards there are already 0.
        padding = masks == 0
        observations.masked_fill_(padding.unsqueeze(-1), 0.0)
        actions.masked_fill_(padding.view(*padding.shape, *[1] * (actions.dim() - 3)), 0)
        log_probs.masked_fill_(padding, 0.0)
        return Trajectories(
            observations=observations,
            actions=actions,
            rewards=torch.from_numpy(rewards).view(num_tasks, episodes, horizon).to(device),
            log_probs=log_probs,
            masks=masks,
            lengths=lengths_tensor,
        ).validate()

    def close(self) -> None:
        """Close the environments."""
        self._envs.close()


def _in_phase_layout(params: Params, part: slice, phase_tasks: int, device: torch.device) -> Params:
    """Per-task ``params`` of a part of a phase, placed at ``part`` in fresh zero-filled stacks of
    ``phase_tasks`` tasks: the memory layout of the whole phase's, whatever view came in."""
    laid_out = {}
    for name, tensor in params.items():
        full = torch.zeros((phase_tasks, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
        full[part] = tensor
        laid_out[name] = full
    return laid_out


def check_request(
    params: Params,
    num_tasks: int,
    episodes_per_task: int,
    seed: int,
    episode_counts: Sequence[int] | None = None,
) -> np.ndarray | None:
    """Raise a ValueError naming what is wrong with a :meth:`Sampler.sample` request.

    For backends, to reject a bad request before doing any work.

    Returns:
        ``episode_counts`` as an int64 array ``[num_tasks]``, or None if it is None.
    """
    if num_tasks < 1:
        raise ValueError("sample() needs at least one task")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be at least 1, got {episodes_per_task}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not params:
        raise ValueError("params is empty; pass the policy's parameters stacked per task")
    for name, tensor in params.items():
        if tensor.dim() == 0 or tensor.shape[0] != num_tasks:
            raise ValueError(
                f"params[{name!r}] has shape {tuple(tensor.shape)}, but params must be stacked "
                f"per task with a leading axis of len(tasks) = {num_tasks}; for one shared "
                f"parameter set pass expand_params(params, {num_tasks})"
            )
    if episode_counts is None:
        return None
    counts = np.asarray(episode_counts)
    if (
        counts.shape != (num_tasks,)
        or not np.issubdtype(counts.dtype, np.integer)
        or (counts < 1).any()
        or (counts > episodes_per_task).any()
    ):
        raise ValueError(
            f"episode_counts must hold one integer from 1 to episodes_per_task = "
            f"{episodes_per_task} per task ({num_tasks} tasks), got {list(episode_counts)}"
        )
    return counts.astype(np.int64)
