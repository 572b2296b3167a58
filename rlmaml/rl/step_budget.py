"""Batches counted in time steps, as the MAML paper's code (rllab) counted them.

rllab's samplers collect whole episodes until the batch holds ``batch_size`` time steps: the
paper's "20 trajectories" per task are 20 x H = 2,000 time steps (4,000 at evaluation, where its
test script passes ``batch_size=4000``). As long as every episode runs to the horizon this is
the same as counting episodes. When episodes end early (Navigation2D reaching its goal, an Ant
falling), the budget holds more, shorter episodes: the inner step sees more data, and the
average return of the batch, taken over its episodes as rllab's ``AverageReturn`` is, weighs
short episodes by how many of them fit, which favours the ones that end early (on
Navigation2D, those that reach the goal).

:func:`sample_step_budget` reproduces this on top of any :class:`~rlmaml.rl.samplers.Sampler`:
it samples ``E`` episodes of every task, then further rounds of episodes for the tasks whose
episodes have not yet filled ``E x H`` steps, and keeps each task's episodes in order until
they reach the budget (the last one whole; rllab cut it to the exact budget). A round gives
each short task the episodes its own shortfall needs at its mean episode length so far, plus
one (``episode_counts``), so that little is simulated only to be thrown away: asking every
short task for the largest task's shortfall, as this module once did, discarded about 40% of
the steps an AntVel phase simulated. Tasks end up with different numbers of episodes; the batch
is padded with empty episodes (length 0, all masks 0), which every loss, baseline and
:meth:`~rlmaml.rl.trajectories.Trajectories.mean_return` ignores. Round ``r > 0`` samples with
a seed derived from ``(seed, r)``, so the batch is as reproducible and as backend-independent
as a single phase, and round 0 uses ``seed`` itself: with episodes that never end early the
result equals ``sampler.sample(..., E, seed)``.

Cost: every episode keeps its own row padded to the horizon, so a batch of short episodes
takes ``H / mean length`` times the memory of its steps. Returns and GAE run on that padded
layout (cheap, and they need the episode boundaries), the linear baseline on its valid steps
only; the loss batches the inner and outer steps work on are then packed
(:meth:`~rlmaml.rl.losses.PolicyBatch.packed`), so the policy's forward and backward passes
cost the batch's steps, not its rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from envs.protocol import Task
from rlmaml.core.params import Params, expand_params
from rlmaml.rl.samplers import Sampler, shared_params
from rlmaml.rl.trajectories import Trajectories

MAX_ROUND_FACTOR = 4
"""A later round samples at most this many times ``E`` episodes per task (bounds its memory;
more rounds follow if the budget is still not reached)."""


def sample_step_budget(
    sampler: Sampler, params: Params, tasks: Sequence[Task], episodes_per_task: int, seed: int
) -> Trajectories:
    """Whole episodes of every task until they hold ``episodes_per_task x H`` time steps.

    Args:
        sampler: any sampling backend.
        params: stacked per-task parameters, as for :meth:`Sampler.sample`.
        tasks: the tasks.
        episodes_per_task: ``E``; the budget per task is ``E x H`` steps, ``H`` the horizon.
        seed: the batch's seed (round 0 samples with it).

    Returns:
        Trajectories ``[T, E', H]`` with ``E' >= E`` the most episodes any task needed; a task
        with fewer is padded with empty episodes.
    """
    first = sampler.sample(params, tasks, episodes_per_task, seed)
    budget = episodes_per_task * first.horizon
    collected: list[list[Trajectories]] = [[_task(first, t)] for t in range(len(tasks))]
    steps = first.lengths.sum(dim=1).cpu().numpy()
    max_round = MAX_ROUND_FACTOR * episodes_per_task
    round_index = 0
    while (steps < budget).any():
        round_index += 1
        short = np.flatnonzero(steps < budget).tolist()
        mean_length = {t: steps[t] / sum(c.num_episodes for c in collected[t]) for t in short}
        counts = [
            min(math.ceil((budget - steps[t]) / mean_length[t]) + 1, max_round) for t in short
        ]
        more = sampler.sample(
            _select_tasks(params, short),
            [tasks[t] for t in short],
            max(counts),
            _round_seed(seed, round_index),
            episode_counts=counts,
        )
        for row, (t, count) in enumerate(zip(short, counts, strict=True)):
            collected[t].append(_task(more, row, count))
            steps[t] += int(more.lengths[row].sum())
    return _stack_within_budget(collected, budget)


def _task(trajectories: Trajectories, index: int, episodes: int | None = None) -> Trajectories:
    """Task ``index`` of ``trajectories`` (its first ``episodes``, or all), keeping a task axis
    of one."""
    return Trajectories(*(field[index : index + 1, :episodes] for field in trajectories))


def _select_tasks(params: Params, tasks: list[int]) -> Params:
    """``params`` of the given tasks; parameters shared by all tasks (``expand_params``) stay
    shared, so the sampler keeps its single-forward path."""
    shared = shared_params(params)
    if shared is not None:
        return expand_params(shared, len(tasks))
    return {name: tensor[tasks] for name, tensor in params.items()}


def _round_seed(seed: int, round_index: int) -> int:
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0] >> 1)


def _stack_within_budget(collected: list[list[Trajectories]], budget: int) -> Trajectories:
    """Each task's episodes, in order, up to the first that reaches ``budget`` steps, padded
    with empty episodes to a common count."""
    kept: list[Trajectories] = []
    for parts in collected:
        episodes = Trajectories(*(torch.cat(fields, dim=1) for fields in zip(*parts, strict=True)))
        cumulative = episodes.lengths[0].cumsum(0)
        count = int((cumulative < budget).sum()) + 1
        kept.append(Trajectories(*(field[:, :count] for field in episodes)))
    width = max(k.num_episodes for k in kept)
    return Trajectories(
        *(
            torch.cat([_pad_episodes(field, width) for field in fields], dim=0)
            for fields in zip(*kept, strict=True)
        )
    ).validate()


def _pad_episodes(field: torch.Tensor, width: int) -> torch.Tensor:
    """``field [1, E, ...]`` with zero episodes appended up to ``width``."""
    missing = width - field.shape[1]
    if missing == 0:
        return field
    padding = field.new_zeros((1, missing, *field.shape[2:]))
    return torch.cat([field, padding], dim=1)
