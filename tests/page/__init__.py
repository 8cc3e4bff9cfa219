"""Tests of the page: app.py and page/, without a browser and in a real one."""
