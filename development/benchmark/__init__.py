"""Benchmark report: latency, sizes, memory and accuracy, beside the naive Concrete ML port.

Run from the repository root::

    python -m development.benchmark            # full run (medians over 5 runs after a warm-up)
    python -m development.benchmark --quick    # 1 run and tiny counts (the smoke test uses it)

Everything is measured in ONE run on the same machine, so the ratios to the naive port hold when
the machine's speed drifts:

1. accuracy: the float and quantized F1 of the model card (measured by ``development.train``),
   and the FHE simulation on the whole held-out set (the module is recompiled from
   ``development.train.build`` on ``data/applications.csv``; the rebuilt tree must equal the
   deployed reference tree);
2. client and server FHE with the deployed artifacts (``fhe.Client`` on client_specs.json,
   ``fhe.Server.load`` of server.zip): key generation, evaluation-key size, encryption time and
   ciphertext size per party, FHE predict with freshly deserialized keys and warm, explain of
   all candidate bins, decryption, and real FHE on held-out rows (agreement with the clear tree);
3. the naive port: Concrete ML's own ``DecisionTreeClassifier(n_bits=6)`` of the same depth on
   the same training split, compiled with the default configuration (no compression) and
   deployed single-function with FHEModelDev / FHEModelClient / FHEModelServer;
4. over HTTP against a real ``uvicorn server:app`` started here on a free port (sessions in a
   temporary FHE_STORE_DIR): the five-step flow with ``backend.CreditScoringClient`` and explain
   on refused profiles, the server's RSS after 1 and 5 live sessions, decisions per minute with
   4 clients at once and /health latency while FHE runs;
5. a bank's portfolio against the same server: the first 100 rows of ``data/applications.csv``
   scored CSV to CSV by ``fhe_client.portfolio.score_portfolio`` (what ``credit_portfolio`` runs),
   each run with a key set of its own, the verdicts compared with the clear tree; and warm
   ``decide_batch`` calls of 16 applications.

Results go to ``<out>/benchmark_results.json`` (seconds, bytes, fractions) and
``<out>/benchmark_results.md`` (each figure, its target, met or missed).

Modules: ``figures`` declares every figure once (key, label, unit, target); ``report`` records
them and writes the two files; one module per stage (``accuracy``, ``direct_fhe``, ``naive``,
``http_flows``, ``throughput``, ``portfolio``); ``run`` runs them in order. The server runs
under the shared launcher (``fhe_server.launcher``), the HTTP flows use the client library
(``backend``).
"""
