"""The client library, one concern a module; ``backend`` is its front (names and the repo's paths).

- ``errors``: ``ClientError`` and the server's refusals (from ``contracts.single_key.ERRORS``);
- ``transport``: ``ServerSession``, requests, retries and resuming a lost session;
- ``retry``: bounded retries and ``wait_while_busy`` / ``retry_while_busy``;
- ``keys``: the key set on disk;
- ``client``: ``CreditScoringClient``, one application's steps;
- ``explanation``: the explain step's answer;
- ``preprocessing``: each party's fields -> the circuit's inputs (shared with the three-party
  party program: numpy and ``contracts`` only);
- ``portfolio`` and ``portfolio_csv``: a bank's portfolio, CSV to CSV.

Every path and setting is an argument: no module here imports ``settings`` or reads the
environment. Importing the package does no work: modules are imported where they are used.
"""
