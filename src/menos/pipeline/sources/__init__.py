"""Sources: where a job's text and metadata come from."""
