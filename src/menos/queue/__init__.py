"""The PostgreSQL job queue: models, repository, worker, rescuer, dispatcher, maintenance."""
