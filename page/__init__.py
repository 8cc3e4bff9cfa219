"""The Gradio page's parts beside ``app.py``: its strings, its limits and its guard.

Importing the package does no work: each module is imported where it is used.
"""
