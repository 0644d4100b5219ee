"""Ingestion components: connector sync, parsing, PII masking, chunking (one module a stage)."""
