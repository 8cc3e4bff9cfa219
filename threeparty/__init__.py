"""Three-party (threshold BFV) mode: the verdict decrypts only when all three parties take part.

The applicant, the bank and the credit bureau each hold one share of a joint OpenFHE secret key;
the server evaluates the public decision tree (``deployment_files/threeparty_layout.json``) on
their ciphertexts with public evaluation keys only. This package imports on Python 3.10 and 3.12
without Concrete, Gradio or torch; OpenFHE itself is imported only by ``threeparty.engine``.

Importing the package changes nothing in the environment (the page's process imports
``threeparty.command``): ``OMP_NUM_THREADS=1`` is set where OpenFHE runs, by the entry points
(``python -m threeparty``, ``threeparty.engine`` before it loads openfhe, which the server and
the sandbox workers import) and given to every child process they start.
"""

from contracts.parties import PARTIES

__all__ = ["PARTIES"]  # the three parties, in key-generation order (the applicant leads)
