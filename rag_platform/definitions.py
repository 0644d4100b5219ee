"""The Definitions object: everything under ``rag_platform/defs`` (assets, checks, sensors,
schedules, jobs, resources), discovered by ``dg.load_from_defs_folder``."""

from pathlib import Path

import dagster as dg

import rag_platform.settings  # noqa: F401  (offline model settings before any model import)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
