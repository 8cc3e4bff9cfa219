"""Tests of the development tools: development/."""
