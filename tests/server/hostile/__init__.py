"""Hostile requests against one real server process, with a bystander session."""
