"""Prefect flows: the whole pipeline (pipeline.py, ordering the stages in stages.py) and one flow per action."""

import tasks  # noqa: F401 - sets Prefect's ephemeral API startup timeout before prefect is imported
