"""Prefect tasks and the glue to Optuna and MLflow: staging, the AutoML study, training, the actions, the registry.

Imports go one way: flows/ builds on tasks/, tasks/ builds on the oneformer package, never the reverse.
"""
