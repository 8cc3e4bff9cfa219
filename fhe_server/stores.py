"""Session stores: the interface and the filesystem store, under the name they had together.

``SessionStore``, ``token_digest`` and ``short_id`` live in ``fhe_server.session_store``;
``FileSessionStore`` (the default store), ``FileSessionQuota``, ``SessionMeta`` and
``atomic_write`` in ``fhe_server.file_store``. This module re-exports them, so that code written
against ``fhe_server.stores`` keeps working.
"""

from fhe_server.file_store import FileSessionQuota, FileSessionStore, SessionMeta, atomic_write
from fhe_server.session_store import SessionStore, short_id, token_digest

__all__ = [
    "FileSessionQuota",
    "FileSessionStore",
    "SessionMeta",
    "SessionStore",
    "atomic_write",
    "short_id",
    "token_digest",
]
