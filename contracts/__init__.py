"""The wire contracts of both modes, named once; this package imports nothing from the project.

- ``contracts.parties``: the parties, the result's recipients and each party's fields.
- ``contracts.wire``: what both modes share on the wire (bearer scheme, media type, headers).
- ``contracts.errors``: the shape of one error status (code, status, meanings).
- ``contracts.single_key``: the single-key mode's routes, headers and error table.
- ``contracts.threeparty``: the three-party mode's routes, steps, blob names and error table.

Standard library only and Python 3.10 compatible: the settings, the client library, both
servers and the three-party party program (Python 3.10) import these names, never the reverse.
Importing the package does no work.
"""
