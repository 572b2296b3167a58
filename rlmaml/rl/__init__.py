"""Reinforcement-learning building blocks: trajectory batches, returns and advantages, baselines.

Everything works on padded batches with leading axes ``[task, episode, time]``, so a whole
meta-batch is processed at once.
"""

from rlmaml.rl.baseline import LinearFeatureBaseline, linear_features
from rlmaml.rl.returns import discounted_returns, gae, normalize_advantages
from rlmaml.rl.trajectories import Trajectories, masks_from_lengths

__all__ = [
    "LinearFeatureBaseline",
    "Trajectories",
    "discounted_returns",
    "gae",
    "linear_features",
    "masks_from_lengths",
    "normalize_advantages",
]
