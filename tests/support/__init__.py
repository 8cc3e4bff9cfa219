"""What the main suite's tests share, imported one way: ``from tests.support.kit import Kit``.

- ``kit``: the one key kit (a real client key set) and the model card it encrypts for;
- ``applications``: ``Profile``, the example application of ``contracts.examples`` and the
  others a test needs, each named for why;
- ``http``: a session's steps over raw HTTP and the checks of the answers;
- ``servers``: a real server in a child process, a scripted mock server (also imported by the
  three-party suite, in ``.venv-threeparty``: httpx and the launcher only);
- ``inprocess``: the app through TestClient; ``processes``: a server's process, memory, disk;
- ``cluster``, ``hostile``, ``browser``, ``page_handlers``: what one area's test modules share.

Fixtures are in the conftest files, not here.
"""
