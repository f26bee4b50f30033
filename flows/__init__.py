"""Prefect flows: the whole pipeline (pipeline.py, ordering the stages in stages.py) and one flow per action."""
