"""Small HTTP exchanges with an identity provider (a JWKS document, a token introspection), made
from a worker thread: stdlib urllib, bounded in size and, as a whole, in time."""

from __future__ import annotations

import time
import urllib.request
from email.message import Message


def fetch(request: urllib.request.Request, timeout: float, max_bytes: int) -> tuple[bytes, Message]:
    """The answer's body and headers; gives up once `timeout` has passed in all (the socket's
    timeout is per read) or the body grows past `max_bytes`. An HTTP error status raises."""
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = b""
        # read1: what has arrived, so that a server sending a byte at a time meets the deadline.
        while chunk := response.read1(65536):
            body += chunk
            if len(body) > max_bytes:
                raise ValueError(f"its answer is larger than {max_bytes >> 10} KiB")
            if time.monotonic() > deadline:
                raise TimeoutError("it sends too slowly")
        return body, response.headers
