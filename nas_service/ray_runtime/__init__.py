"""The one subpackage of the project that imports Ray.

Ray's reporting and checkpoint APIs changed several times across 2.x; keeping every Ray call here means
a Ray upgrade touches these files only. The rest of the service calls the plain functions re-exported
below: ``tune`` runs stages as Ray Tune experiments (adapting :mod:`nas_service.trial_lifecycle`),
``train`` runs DDP retraining on Ray Train, ``jobs`` talks to the Jobs API.
"""

from .tune import (
    RAY_ENVIRONMENT,
    StageOutcome,
    cluster_resources,
    configure_environment,
    run_optuna_trials,
    run_trials,
    shutdown_ray,
    start_ray,
)

__all__ = [
    "RAY_ENVIRONMENT",
    "StageOutcome",
    "cluster_resources",
    "configure_environment",
    "run_optuna_trials",
    "run_trials",
    "shutdown_ray",
    "start_ray",
]
