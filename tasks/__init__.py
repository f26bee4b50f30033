"""Prefect tasks and the glue to Optuna and MLflow: staging, the AutoML study, training, the actions, the registry.

Imports go one way: flows/ builds on tasks/, tasks/ builds on the oneformer package, never the reverse.
"""

import os

# Without PREFECT_API_URL, Prefect starts an ephemeral API server and waits 20 s for it by default; a new database
# migrating on a loaded 2-core machine takes longer and the run died before its first task. Prefect reads the
# setting when it is first imported, so it is set here, before any import of prefect (a user's value wins).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
