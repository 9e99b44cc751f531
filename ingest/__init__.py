"""Ingestion: the worker and bulk ingestion on top of the engine."""
