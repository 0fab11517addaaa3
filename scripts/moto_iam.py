#!/usr/bin/env python3
"""moto with its IAM enforcement on, for tests/it/iam.rs: the server of scripts/moto_faults.py
(its faults and console texts) with every request checked against the caller's IAM policies
from the first one (INITIAL_NO_AUTH_ACTION_COUNT=0, unless set; /moto-api/reset-auth N lets the
next N through unchecked).

One correction, to check signatures as EC2 does: over the body as it was sent. moto 5.2.5
recomputes a request's SigV4 signature from the form fields it parsed, encoded again by
botocore (a space as `+`), instead of from the body: a request of another SDK that encodes a
space as `%20` (the Rust SDK does; both are valid) fails as `AuthFailure`. Here moto is handed
the body as received, which its check uses when it has one.

A second, to answer IAM's refusals as IAM does: moto writes the refusal of an IAM call that its
enforcement denies in EC2's error format (`<ErrorResponse><Errors><Error>`), which an SDK reading
IAM's (`<ErrorResponse><Error>`, https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html)
finds no error code in. Errors of requests signed for the `iam` service are rewritten to IAM's.

Usage: python moto_iam.py --host 127.0.0.1 --port P
"""

import importlib.util
import os
import sys

os.environ.setdefault("INITIAL_NO_AUTH_ACTION_COUNT", "0")

_spec = importlib.util.spec_from_file_location(
    "moto_faults", os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto_faults.py")
)
moto_faults = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(moto_faults)

from moto.core.responses import BaseResponse  # noqa: E402

RAW_BODY = "stratus.raw_body"
_setup_class = BaseResponse.setup_class


def setup_class(self, request, *args, **kwargs):
    result = _setup_class(self, request, *args, **kwargs)
    raw = getattr(request, "environ", {}).get(RAW_BODY)
    if raw and not self.raw_body:
        self.raw_body = raw
    return result


BaseResponse.setup_class = setup_class


class RawBody:
    """Keeps the body as received beside the request, for `setup_class`."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            environ[RAW_BODY] = moto_faults.FaultMiddleware.read_body(environ)
        return self.app(environ, start_response)


class IamErrors:
    """Rewrites the EC2-format error body of an IAM request to IAM's format."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if "/iam/aws4_request" not in environ.get("HTTP_AUTHORIZATION", ""):
            return self.app(environ, start_response)
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        status, headers = captured["status"], captured["headers"]
        if not status.startswith("2") and b"<Errors><Error>" in body:
            body = body.replace(b"<Errors><Error>", b"<Error>", 1).replace(
                b"</Error></Errors>", b"</Error>", 1
            )
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


def main():
    parser = moto_faults.argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    for sig in (moto_faults.signal.SIGINT, moto_faults.signal.SIGTERM):
        moto_faults.signal.signal(sig, lambda *_: sys.exit(0))
    moto_app = moto_faults.DomainDispatcherApplication(moto_faults.create_backend_app)
    moto_app.debug = True
    moto_faults.run_simple(
        args.host,
        args.port,
        IamErrors(RawBody(moto_faults.FaultMiddleware(moto_app))),
        threaded=True,
        use_reloader=False,
        request_handler=moto_faults.MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
