"""The Definitions object: everything under ``rag_platform/defs`` (assets, checks, sensors,
schedules, jobs, resources), discovered by ``dg.load_from_defs_folder``."""

from pathlib import Path

import dagster as dg

from rag_platform.settings import configure_runtime_env


@dg.definitions
def defs() -> dg.Definitions:
    """Every asset, check, job, sensor, schedule and resource of the project.

    Dagster calls this in each process that loads the code location (``dagster dev``'s code
    server, run workers, ``rag-platform materialize``), so the runtime environment is configured
    here, before the asset modules import the model libraries.
    """
    configure_runtime_env()
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
