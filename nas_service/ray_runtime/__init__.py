"""The one subpackage of the project that imports Ray.

Ray's reporting and checkpoint APIs changed several times across 2.x; keeping every Ray call here means
a Ray upgrade touches these files only. The rest of the service calls the plain functions re-exported
below. ``tune`` runs stages as Ray Tune experiments.
"""

from .tune import (
    FAULT_INJECTION_ENV,
    RAY_ENVIRONMENT,
    StageOutcome,
    TrialPayload,
    cluster_resources,
    configure_environment,
    run_optuna_trials,
    run_trials,
    shutdown_ray,
    start_ray,
)
from .tune import _local_workdir as local_workdir

__all__ = [
    "FAULT_INJECTION_ENV",
    "RAY_ENVIRONMENT",
    "StageOutcome",
    "TrialPayload",
    "cluster_resources",
    "configure_environment",
    "local_workdir",
    "run_optuna_trials",
    "run_trials",
    "shutdown_ray",
    "start_ray",
]
