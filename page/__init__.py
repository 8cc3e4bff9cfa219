"""The Gradio page's parts beside ``app.py``: its sections, settings, runtime, strings and limits.

``sections/`` holds one module per section of the page (layout, handlers, texts' keys);
``config.py`` the client-side settings, ``runtime.py`` what the handlers share,
``supervisor.py`` the servers the page starts. Importing the package does no work: each module
is imported where it is used.
"""
