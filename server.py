"""The FHE scoring server's entry point: ``uvicorn server:app``.

The server never sees a clear value. A client opens a session by uploading its evaluation keys,
each party uploads its own ciphertext, the server runs the decision tree on them and keeps the
encrypted verdict, which only the client can decrypt. The parts live in the ``fhe_server``
package: ``protocol`` (parties, paths, headers, error codes), ``errors``, ``model`` (the loaded
deployment), ``stores`` (the store interface and the filesystem store), ``redis_store``,
``runtime`` (key cache, FHE gate, session quota), ``service`` (the use cases), ``body`` (request
bodies), ``hosts`` (accepted Host names) and ``api`` (``create_app``).
The settings are read from the FHE_* environment variables (``settings.ServerSettings``); the
deployment is loaded when the app starts, not at import.
"""

from fhe_server.api import create_app
from settings import get_settings

app = create_app(get_settings())
