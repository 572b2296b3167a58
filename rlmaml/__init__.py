"""rlmaml: Model-Agnostic Meta-Learning for reinforcement learning and supervised few-shot tasks.

``rlmaml.core`` is the one meta-learning core (functional parameters, the inner loop, MAML,
first-order MAML, Meta-SGD and Reptile); ``rlmaml.supervised`` and ``rlmaml.rl`` are the two
settings built on it; ``rlmaml.runs`` holds configs, run folders, checkpoints and metrics.
"""

__version__ = "0.1.0"
