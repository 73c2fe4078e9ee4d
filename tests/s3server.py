"""An S3-compatible server on 127.0.0.1 for the tests (moto's server mode), counting what it serves.

Never a real cloud: the fixture sets ``AWS_ENDPOINT_URL`` to this server and
dummy credentials for the test session.  The counting middleware sees every
request the server answers (method, key, response bytes), so a test can prove
that a region read fetched a few objects, not the whole image.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Served:
    """What the server answered since the last :meth:`reset`."""

    requests: Counter = field(default_factory=Counter)  # method -> count
    body_bytes: int = 0  # bytes of GET response bodies
    keys: list = field(default_factory=list)  # (method, path) in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.body_bytes = 0
            self.keys.clear()

    @property
    def gets(self) -> int:
        return self.requests["GET"]


class S3Server:
    """moto's S3 on a free port of 127.0.0.1, in a thread of the test process."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        self.served = Served()
        #: access key ids the server refuses as S3 does an unknown key (403 InvalidAccessKeyId); moto itself
        #: accepts any credentials
        self.refused_keys: set[str] = set()
        app = DomainDispatcherApplication(create_backend_app)
        served = self.served
        refused = self.refused_keys

        def counting(environ, start_response):
            method = environ["REQUEST_METHOD"]
            auth = environ.get("HTTP_AUTHORIZATION", "")
            if any(f"Credential={key}/" in auth for key in refused):
                error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
                         b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
                         b"</Error>")
                body = b"" if method == "HEAD" else error
                start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                                 ("Content-Length", str(len(body)))])
                return [body]
            body = b"".join(app(environ, start_response))
            with served.lock:
                served.requests[method] += 1
                served.keys.append((method, environ.get("PATH_INFO", "")))
                if method == "GET":
                    served.body_bytes += len(body)
            return [body]

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):  # one line per request would drown the test output
                pass

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=Quiet)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
