"""Three-party (threshold BFV) mode: the verdict decrypts only when all three parties take part.

The applicant, the bank and the credit bureau each hold one share of a joint OpenFHE secret key;
the server evaluates the public decision tree (``deployment_files/threeparty_layout.json``) on
their ciphertexts with public evaluation keys only. This package imports on Python 3.10 without
Concrete, Gradio or torch; OpenFHE itself is imported only by ``threeparty.engine``.
"""

import os

# Every OpenFHE process runs single-threaded: on a shared 2-core machine OpenMP threads make its
# times swing tenfold. Set before any submodule imports openfhe; an explicit setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from contracts.parties import PARTIES  # noqa: E402  (after OMP_NUM_THREADS)

__all__ = ["PARTIES"]  # the three parties, in key-generation order (the applicant leads)
