"""The staged ingest pipeline: fetch, prepare, analyze, parse, persist."""
