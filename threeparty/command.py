"""The party command line (``python -m threeparty ...``), built in one place.

Pure and standard-library only: the page's Python 3.11 process (which has no OpenFHE) builds the
same command lines as ``threeparty.processes`` (tests, benchmark) with these functions. Importing
this module loads ``threeparty/__init__.py`` only, which sets nothing in the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

# Every OpenFHE process runs single-threaded: on a shared 2-core machine OpenMP threads make its
# times swing tenfold. Given to each party process (an explicit setting in the caller's
# environment is overridden, as before).
PARTY_ENV = {"OMP_NUM_THREADS": "1"}


def identity_command(python: str | Path, keys_dir: Path) -> list[str]:
    """``python -m threeparty identity --keys DIR``: make (once) a party's identity key."""
    return [str(python), "-m", "threeparty", "identity", "--keys", str(keys_dir)]


def party_command(
    python: str | Path,
    *,
    role: str,
    server_url: str,
    invitation: str,
    keys_dir: Path,
    wait: float,
    peers: Mapping[str, str],
    extra: Sequence[str] = (),
) -> list[str]:
    """One party's command line (its fields then go to its stdin as JSON).

    Args:
        python: the interpreter with openfhe (``.venv-threeparty``'s).
        role: the party's role.
        server_url: the three-party server's base URL.
        invitation: the party's invitation.
        keys_dir: the party's own key folder.
        wait: seconds the party waits for another before a time-out (``--wait``).
        peers: {role: fingerprint} of the two other parties, given out of band.
        extra: more arguments (``--csv FILE --out FILE`` for a portfolio).
    """
    command = [str(python), "-m", "threeparty", "--role", role, "--server", server_url]
    command += ["--session", invitation, "--keys", str(keys_dir), "--wait", str(wait)]
    for other, fingerprint in peers.items():
        command += ["--peer", f"{other}={fingerprint}"]
    return command + list(extra)


def party_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a party process: ``base`` (default this process's) with ``PARTY_ENV``."""
    return {**(os.environ if base is None else base), **PARTY_ENV}
