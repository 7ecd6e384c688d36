"""Datasets: sources, ingestion, the registry, shards, export and lineage."""
