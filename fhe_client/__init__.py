"""Client-side code shared by the single-key client library and the three-party party clients.

Importing the package does no work: modules are imported where they are used.
"""
