"""The MAML core: functional parameters, the inner loop and meta-objectives.

It knows nothing about reinforcement learning or images: a task is whatever data a task loss
``task_loss(params, data)`` accepts, and a batch of tasks is that data with a leading task axis.
"""

from rlmaml.core.inner import StepSize, adapt, detach_step_size, sgd_step
from rlmaml.core.learner import ALGORITHMS, Algorithm, MetaLearner
from rlmaml.core.objectives import (
    TaskLoss,
    adapt_tasks,
    adaptation_curve,
    maml_losses,
    reptile_direction,
)
from rlmaml.core.params import (
    Params,
    expand_params,
    functional_forward,
    module_buffers,
    module_params,
    stack_params,
    unstack_params,
)
from rlmaml.core.tasks import map_tasks, num_tasks

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "MetaLearner",
    "Params",
    "StepSize",
    "TaskLoss",
    "adapt",
    "adapt_tasks",
    "adaptation_curve",
    "detach_step_size",
    "expand_params",
    "functional_forward",
    "maml_losses",
    "map_tasks",
    "module_buffers",
    "module_params",
    "num_tasks",
    "reptile_direction",
    "sgd_step",
    "stack_params",
    "unstack_params",
]
