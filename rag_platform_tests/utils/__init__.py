"""Shared test utilities (factories, service helpers)."""
