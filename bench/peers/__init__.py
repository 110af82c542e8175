"""Peer-queue drivers, run with bench/.venv-peers/bin/python, and the protocol they share."""
