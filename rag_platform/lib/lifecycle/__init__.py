"""Data lifecycle: erasure (documents, principals), export, retention, lineage.

Plain Python (no Dagster import): the CLI, the admin API and the Dagster retention job call the
components here.
"""
