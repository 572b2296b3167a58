"""Meta-RL training and evaluation: the :class:`~rlmaml.runs.loop.Trainable` of an RL run.

One meta-iteration follows the paper (and DESIGN.md's data flow): sample tasks; per inner step,
sample trajectories with the current (adapted) parameters, fit the baseline and take a REINFORCE
step; sample the query trajectories with the adapted parameters; update the meta-parameters with
TRPO (or PPO-clip / Adam) on the post-adaptation surrogate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor

import envs
from rlmaml.core import Params, expand_params, module_params
from rlmaml.rl.baseline import LinearFeatureBaseline
from rlmaml.rl.config import RLConfig
from rlmaml.rl.distributions import Distribution
from rlmaml.rl.losses import PolicyBatch, mean_kl
from rlmaml.rl.maml import OuterBatch, PolicyMAML
from rlmaml.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, per_task_distribution
from rlmaml.rl.process_sampler import ProcessSampler
from rlmaml.rl.returns import discounted_returns, gae, normalize_advantages
from rlmaml.rl.samplers import Sampler, VectorizedSampler
from rlmaml.rl.step_budget import sample_step_budget
from rlmaml.rl.trajectories import Trajectories
from rlmaml.rl.trpo import TRPOSettings, trpo_step
from rlmaml.runs.config import ConfigError
from rlmaml.runs.evaluation import AdaptationResult, summarise
from rlmaml.runs.loop import NonFiniteUpdate, Selection, ensure_finite
from rlmaml.runs.state import capture_state, restore_state

# Held-out tasks come from streams of the run seed of their own, never the training one:
# test tasks for ``rlmaml evaluate``, validation tasks for choosing the best iteration.
_TEST_STREAM, _VALIDATION_STREAM = 1, 2

# The MAML paper's average returns after 0..3 steps (REFERENCE.md section 3), for plots.
PAPER_RETURNS: dict[str, list[float]] = {
    "rlmaml/Navigation2D-v0": [-40.4, -11.7, -3.3, -3.2],
    "rlmaml/HalfCheetahVel-v0": [-129.5, -78.6, -66.6, -60.8],
    "rlmaml/HalfCheetahDir-v0": [-50.7, 293.2, 313.5, 315.7],
    "rlmaml/AntVel-v0": [30.6, 96.7, 100.1, 101.4],
    "rlmaml/AntDir-v0": [8.7, 499.2, 500.7, 499.1],
}


def make_task_env(config: RLConfig, seed: int) -> gymnasium.Env:
    """A seeded instance of the task family, used to draw tasks (never stepped).

    Raises:
        ConfigError: naming ``env.id`` if the id is unknown or the env is not a task family.
    """
    try:
        env = gymnasium.make(config.env.id, **config.env.kwargs)
        family = envs.require_task_family(env)
    except (gymnasium.error.Error, TypeError) as error:
        raise ConfigError(f"env.id: {error}") from error
    env.reset(seed=seed)
    return family


def make_policy(config: RLConfig, env: gymnasium.Env) -> torch.nn.Module:
    """The paper's policy for the env's spaces: Gaussian for Box actions, else categorical."""
    obs_dim = int(np.prod(env.observation_space.shape))
    hidden = tuple(config.policy.hidden)
    if isinstance(env.action_space, gymnasium.spaces.Box):
        act_dim = int(np.prod(env.action_space.shape))
        return GaussianMLPPolicy(
            obs_dim, act_dim, hidden, init_std=config.policy.init_std, init=config.policy.init
        )
    if isinstance(env.action_space, gymnasium.spaces.Discrete):
        return CategoricalMLPPolicy(
            obs_dim, int(env.action_space.n), hidden, init=config.policy.init
        )
    raise TypeError(f"{config.env.id}: unsupported action space {env.action_space}")


def make_sampler(config: RLConfig, policy: torch.nn.Module) -> Sampler:
    """The configured sampling backend for ``policy`` on the task family."""
    if config.sampler.backend == "process":
        return ProcessSampler(
            config.env.id,
            policy,
            config.env.kwargs,
            num_workers=config.sampler.workers,
            device=config.run.device,
            timeout_s=config.sampler.timeout_s,
        )
    return VectorizedSampler(config.env.id, policy, config.env.kwargs, device=config.run.device)


class RLExperiment:
    """One meta-RL run: policy, sampler, baseline and the outer optimiser."""

    def __init__(self, config: RLConfig) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        if config.run.threads is not None:
            torch.set_num_threads(config.run.threads)
        self.device = torch.device(config.run.device)
        self.task_env = make_task_env(config, config.seed)
        self.policy = make_policy(config, self.task_env).to(self.device)
        self.params = module_params(self.policy)
        meta = config.meta
        self.maml = PolicyMAML(self.policy, meta.inner_lr, meta.first_order, meta.vectorize)
        self.sampler = make_sampler(config, self.policy)
        self.optimizer = (
            torch.optim.Adam(self.params.values(), lr=meta.outer_lr)
            if meta.optimizer in ("ppo", "adam")
            else None
        )
        self.trpo = TRPOSettings(
            meta.max_kl, meta.damping, meta.cg_iters, meta.backtrack_ratio, meta.max_backtracks
        )
        self.rng = np.random.default_rng([config.seed, 0])

    @property
    def name(self) -> str:
        return self.config.env.id

    @property
    def reference(self) -> dict[str, tuple[list[int], list[float]]]:
        """The paper's average returns after 0..3 steps for this task family, if reported."""
        values = PAPER_RETURNS.get(self.config.env.id)
        return {} if values is None else {"MAML paper": (list(range(len(values))), values)}

    @property
    def progress_keys(self) -> tuple[str, ...]:
        return ("return_pre", "return_post", "kl", "val_adapted_return")

    @property
    def selection(self) -> Selection | None:
        """The best iteration is the one with the best validation return after adaptation."""
        return Selection("val_adapted_return") if self.config.eval.val_every else None

    def close(self) -> None:
        """Release the sampler's environments (and worker processes, for such backends)."""
        self.sampler.close()

    # -- data ----------------------------------------------------------------------------
    def policy_batch(self, trajectories: Trajectories) -> PolicyBatch:
        """Advantages from the linear feature baseline fitted per task, as a packed loss batch."""
        meta = self.config.meta
        masks = trajectories.masks
        returns = discounted_returns(trajectories.rewards, masks, meta.gamma)
        baseline = LinearFeatureBaseline().fit(trajectories.observations, returns, masks)
        values = baseline.predict(trajectories.observations, masks)
        advantages = gae(trajectories.rewards, values, masks, meta.gamma, meta.gae_lambda)
        if meta.normalize_advantages:
            advantages = normalize_advantages(advantages, masks)
        return PolicyBatch(
            trajectories.observations,
            trajectories.actions,
            advantages.detach(),
            trajectories.log_probs,
            masks,
        ).packed()

    def sample(
        self, params: Params, tasks: Sequence[dict], episodes: int, seed: int
    ) -> Trajectories:
        """A batch of ``episodes`` per task, counted as ``sampler.batch_unit`` says."""
        if self.config.sampler.batch_unit == "steps":
            return sample_step_budget(self.sampler, params, tasks, episodes, seed)
        return self.sampler.sample(params, tasks, episodes, seed)

    def _seed(self) -> int:
        return int(self.rng.integers(2**31))

    def collect(self, tasks: Sequence[dict], episodes: int) -> tuple[OuterBatch, dict[str, float]]:
        """Sample every inner step's support batch and the query batch for ``tasks``."""
        meta, n = self.config.meta, len(tasks)
        theta = {k: v.detach() for k, v in self.params.items()}
        current = expand_params(theta, n)
        supports: list[PolicyBatch] = []
        returns: list[float] = []
        env_steps, sampling_s = 0, 0.0
        for _ in range(meta.inner_steps + 1):
            start = time.perf_counter()
            with torch.no_grad():
                trajectories = self.sample(current, tasks, episodes, self._seed())
            sampling_s += time.perf_counter() - start
            env_steps += trajectories.num_steps()
            returns.append(trajectories.mean_return().mean().item())
            batch = self.policy_batch(trajectories)
            if len(supports) == meta.inner_steps:
                with torch.no_grad():
                    behaviour = per_task_distribution(
                        self.policy, current, batch.observations
                    ).detach()
                outer = OuterBatch(tuple(supports), batch, behaviour)
                break
            supports.append(batch)
            with torch.no_grad():
                adapted = {k: v.detach() for k, v in self.maml.adapted(theta, supports).items()}
                if len(supports) == 1:
                    inner_kl = self._step_kl(current, adapted, batch)
            current = adapted
        stats = {
            "return_pre": returns[0],
            "return_post": returns[-1],
            "inner_kl": inner_kl,
            "env_steps": env_steps,
            "sampling_s": sampling_s,
        }
        return outer, stats

    def _step_kl(self, before: Params, after: Params, batch: PolicyBatch) -> float:
        """Mean ``KL(pi_before || pi_after)`` over the valid steps of ``batch``.

        Logged as ``inner_kl`` for the first inner step: how far one step of size ``alpha``
        moves the policy on the data it was computed from. Compare it with the outer step's
        trust region (``meta.max_kl``): on HalfCheetah the paper's ``alpha = 0.1`` moved the
        policy 17 times as far as that already at initialisation (README, Results).
        """
        observations = batch.observations
        old = per_task_distribution(self.policy, before, observations)
        new = per_task_distribution(self.policy, after, observations)
        return mean_kl(old, new, batch.masks).item()

    # -- Trainable -----------------------------------------------------------------------
    def train_iteration(self, iteration: int) -> dict[str, float]:
        """One meta-iteration; returns its metrics."""
        began = time.perf_counter()
        tasks = self.task_env.sample_tasks(self.config.meta.meta_batch)
        batch, stats = self.collect(tasks, self.config.meta.episodes)
        start = time.perf_counter()
        outer = self._outer_step(batch)
        total = time.perf_counter() - began
        values = {
            **stats,
            **outer,
            "outer_s": time.perf_counter() - start,
            "iteration_s": total,
            "env_steps_per_s": stats["env_steps"] / stats["sampling_s"],
        }
        every = self.config.eval.val_every
        if every and (iteration + 1) % every == 0:
            values.update(self.validate())
        return values

    def _outer_step(self, batch: OuterBatch) -> dict[str, float]:
        meta = self.config.meta
        params = list(self.params.values())
        if meta.optimizer == "trpo":
            loss, _ = self.maml.surrogate_and_kl(self.params, batch)
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            ensure_finite(loss, params)
            fisher = self.maml.fisher_vector_product(self.params, batch, meta.fisher_subsample)
            try:
                result = trpo_step(
                    self.params,
                    lambda p: self.maml.surrogate_and_kl(p, batch),
                    {n: p.grad for n, p in self.params.items()},
                    fisher,
                    self.trpo,
                    loss.item(),
                )
            except FloatingPointError as error:
                raise NonFiniteUpdate(str(error)) from error
            finally:
                for p in params:
                    p.grad = None
            return {
                "outer_loss": result.loss_before,
                "kl": result.kl,
                "step_fraction": result.step_fraction,
            }
        epochs = meta.ppo_epochs if meta.optimizer == "ppo" else 1
        clip = meta.ppo_clip if meta.optimizer == "ppo" else None
        support = batch.supports[0]
        with torch.no_grad():
            sampling_policy = self._pre_update_distribution(support.observations).detach()
        for _ in range(epochs):
            self.optimizer.zero_grad(set_to_none=True)
            loss, kl = self.maml.surrogate_and_kl(self.params, batch, clip=clip)
            if meta.optimizer == "ppo":
                inner_kl = mean_kl(
                    sampling_policy,
                    self._pre_update_distribution(support.observations),
                    support.masks,
                )
                loss = loss + meta.inner_kl_coef * inner_kl
            loss.backward()
            ensure_finite(loss, params)
            self.optimizer.step()
        return {"outer_loss": loss.item(), "kl": kl.item(), "step_fraction": 1.0}

    def _pre_update_distribution(self, observations: Tensor) -> Distribution:
        """The meta-parameters' action distribution on ``observations [T, ...]``."""
        stacked = expand_params(self.params, observations.shape[0])
        return per_task_distribution(self.policy, stacked, observations)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return capture_state(self._named_params(), self.optimizer, self._generators())

    def load_state(self, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
        restore_state(
            tensors,
            metadata,
            self._named_params(),
            self.optimizer,
            self._generators(),
            learning_rate=self.config.meta.outer_lr,
        )

    def _named_params(self) -> dict[str, Tensor]:
        return {f"params/{name}": p for name, p in self.params.items()}

    def _generators(self) -> dict[str, np.random.Generator]:
        return {"seeds": self.rng, "tasks": self.task_env.np_random}

    # -- evaluation ----------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """The evaluation protocol on the validation tasks (``eval.val_tasks``).

        ``val_adapted_return`` averages the returns after steps 1..``eval.steps``: it rewards
        an initialisation that adapts fast *and* keeps improving, which is what the paper's
        adaptation curves measure.
        """
        steps = max(self.config.eval.steps, 1)
        result = self.evaluate(steps, self.config.eval.val_tasks, stream=_VALIDATION_STREAM)
        values = {f"val_return_{k}": float(result.mean[k]) for k in range(steps + 1)}
        values["val_adapted_return"] = float(np.mean(result.mean[1:]))
        return values

    def evaluate(self, steps: int, n_tasks: int, stream: int = _TEST_STREAM) -> AdaptationResult:
        """Average return on held-out tasks after 0..``steps`` inner steps (paper protocol).

        The first step uses ``alpha``, later ones ``alpha / 2``; every step samples
        ``eval.episodes`` fresh trajectories with the current adapted parameters. ``stream``
        picks the held-out task set (test by default, validation during training).
        """
        episodes = self.config.eval.episodes
        task_env = make_task_env(self.config, self.config.seed + 1_000_003 * stream)
        tasks = task_env.sample_tasks(n_tasks)
        rng = np.random.default_rng([self.config.seed, stream])
        theta = {k: v.detach() for k, v in self.params.items()}
        alpha = self.config.meta.inner_lr
        lrs = [alpha] + [alpha / 2] * max(steps - 1, 0)
        current, supports, per_step = expand_params(theta, n_tasks), [], []
        for step in range(steps + 1):
            with torch.no_grad():
                trajectories = self.sample(current, tasks, episodes, int(rng.integers(2**31)))
            per_step.append(trajectories.mean_return().cpu())
            if step == steps:
                break
            supports.append(self.policy_batch(trajectories))
            with torch.no_grad():
                current = self.maml.adapted(theta, supports, lrs[: len(supports)])
        return summarise("average return", torch.stack(per_step, dim=1), list(tasks))
