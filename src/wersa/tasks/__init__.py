"""Tasks: datasets and generators behind one interface (see :mod:`wersa.tasks.base`).

Importing this package registers every task::

    from wersa.tasks import build_task, list_tasks
    task = build_task("listops", num_train=1000, min_length=500, max_length=2000)
    task.info                                  # vocab_size, max_length, num_classes, source
    batch = next(iter(task.loader("train", batch_size=8)))
    batch["input_ids"], batch["attention_mask"], batch["labels"]   # (B, N), (B, N), (B,)
    print(describe_task("listops", num_train=100))   # Markdown table of every split
"""

from . import images, listops, mqar, pathfinder, shakespeare, text  # noqa: F401  (each registers its tasks)
from .base import IGNORE_INDEX, PAD_ID, Task, TaskInfo, TokenDataset, pad_collate
from .describe import describe, describe_task, format_description
from .registry import TASKS, build_task, list_tasks, register_task, task_class, task_options
from .shakespeare import fetch_shakespeare, find_shakespeare

TASKS.load_plugins("wersa.tasks")  # tasks defined outside this package (see wersa.registry)

__all__ = [
    "IGNORE_INDEX", "PAD_ID", "Task", "TaskInfo", "TokenDataset", "build_task", "describe", "describe_task",
    "fetch_shakespeare", "find_shakespeare", "format_description", "list_tasks", "pad_collate",
    "register_task", "task_class", "task_options",
]
