"""The course's tasks, by name: ticket -> JSON (notebook 05) and question -> SQL (notebook 07).

Each task module defines `TASK`, a `Task`; `make_splits(task)` draws its train / validation /
test splits (the files in data/ are its output), and `get_task(name)` finds a task by name.
"""

from . import sql, tickets
from .task import Example, Task, make_splits

TASKS: dict[str, Task] = {task.name: task for task in (tickets.TASK, sql.TASK)}


def get_task(name: str) -> Task:
    """The task called `name`; a ValueError names the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Example", "Task", "get_task", "make_splits", "sql", "tickets"]
