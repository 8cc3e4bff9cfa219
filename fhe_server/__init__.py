"""The FHE scoring server as a package; ``server.py`` at the top level stays the uvicorn entry.

Importing the package does no work: modules are imported where they are used.
"""
