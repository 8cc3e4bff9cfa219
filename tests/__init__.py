"""The main test suite (Python 3.11, ``.venv``); its folders mirror the code they test.

- ``server/``: ``fhe_server/`` and ``server.py`` (``server/hostile/``: hostile requests against
  one real server process);
- ``cluster/``: ``fhe_server/cluster.py``, the Redis store and nginx (``make cluster``);
- ``client/``: ``fhe_client/``, ``backend.py`` and ``credit_portfolio.py``;
- ``page/``: ``app.py`` and ``page/``, with and without a browser;
- ``contracts/``: ``contracts/``;
- ``development/``: ``development/`` (the model pipeline, the tree compiler, the benchmark);
- ``support/``: what the tests share (the key kit, the example applications, servers, ...);
- the files at this level check the suite itself and the whole project (requirements, sizes).

``threeparty/`` is the three-party suite, run in its own session in ``.venv-threeparty``.
"""
