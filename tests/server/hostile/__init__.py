"""Hostile requests against one real server process (issue 7, part 1), with a bystander session.

Every request here is something a client may send by mistake or on purpose. Each must get a 4xx
answer with a JSON ``{"detail": str}`` (or, for what no one can tell from a valid request
without the secret key, a 2xx), never a 5xx and never a crash; after each test /health answers
and a bystander session, opened before the attacks, still gets its correct verdict (decrypted
and compared with development.reference.clear_verdict). The number of cases of each category is
asserted (``tests.support.hostile.CASE_COUNTS``) so that the README can report it.
"""
