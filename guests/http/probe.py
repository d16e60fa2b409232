"""A wasi:http component for the tests: what it does depends on the path
after its <Location> (the last path segment)."""

import json
import os
import time
import urllib.parse

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, types
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# wasi:io allows at most 4096 bytes per blocking_write_and_flush.
WRITE = 4096

# Requests this instance has served: 1 every time unless instances are
# reused (WasmInstanceReuse).
served = 0

# What "unfinished" keeps of a response, so that it is never finished.
left_open = []


def method_name(m):
    if isinstance(m, types.Method_Other):
        return m.value
    return type(m).__name__.split("_", 1)[1].upper()


def read_all(request):
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err:
                break
    types.IncomingBody.finish(body)
    return b"".join(chunks)


def write_all(out, data):
    for i in range(0, len(data), WRITE):
        out.blocking_write_and_flush(data[i:i + WRITE])


def respond(response_out, parts, status=200, ctype=b"text/plain", pause=0.0, then=None,
            headers=(), trailers=None):
    resp = OutgoingResponse(Fields.from_list([("content-type", ctype), *headers]))
    resp.set_status_code(status)
    body = resp.body()
    ResponseOutparam.set(response_out, Ok(resp))
    with body.write() as out:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            write_all(out, part)
        if then:
            then()
    OutgoingBody.finish(body, trailers)


# An outgoing request "fetch-keep" started and left for a later request.
kept_fetches = []


def start_fetch(url):
    parts = urllib.parse.urlsplit(url)
    req = types.OutgoingRequest(Fields())
    req.set_scheme(types.Scheme_Https() if parts.scheme == "https" else types.Scheme_Http())
    req.set_authority(parts.netloc)
    req.set_path_with_query((parts.path or "/") + ("?" + parts.query if parts.query else ""))
    return outgoing_handler.handle(req, None)


def fetch(url):
    """GETs `url` through wasi:http/outgoing-handler: "STATUS BODY", or
    "error NAME" with the wasi:http error-code's name."""
    try:
        future = start_fetch(url)
    except Err as e:
        return b"error " + type(e.value).__name__.encode()
    return outcome(future)


def outcome(future):
    future.subscribe().block()
    result = future.get()
    # option<result<result<incoming-response, error-code>>>
    while isinstance(result, (Ok, Err)):
        if isinstance(result, Err):
            return b"error " + type(result.value).__name__.encode()
        result = result.value
    return str(result.status()).encode() + b" " + read_all(result)


def fail():
    raise RuntimeError("the probe fails on purpose")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global served
        served += 1
        path = request.path_with_query() or "/"
        action, _, query = path.rsplit("/", 1)[-1].partition("?")
        if action == "head":
            head = {
                "method": method_name(request.method()),
                "scheme": type(request.scheme()).__name__,
                "authority": request.authority(),
                "path": path,
                "headers": [[k, v.decode("latin-1")] for k, v in request.headers().entries()],
            }
            respond(response_out, [json.dumps(head).encode()], ctype=b"application/json")
        elif action == "env":
            respond(response_out, [json.dumps(dict(os.environ)).encode()], ctype=b"application/json")
        elif action == "echo":
            respond(response_out, [read_all(request)], ctype=b"application/octet-stream")
        elif action == "slow":
            respond(response_out, [b"first\n", b"second\n"], pause=1.0)
        elif action == "big":
            # big?MIB: that many MiB, one buffer written again and again.
            mib = int(query or "1")
            respond(response_out, [b"x" * WRITE] * (mib << 20 >> 12))
        elif action == "trap-before":
            fail()
        elif action == "trap-after":
            respond(response_out, [b"partial"], then=fail)
        elif action == "count":
            respond(response_out, [str(served).encode()])
        elif action == "length":
            # length?SAID,WROTE: a content-length of SAID, WROTE bytes written.
            said, wrote = (int(n) for n in query.split(","))
            respond(response_out, [b"x" * wrote], headers=[("content-length", str(said).encode())])
        elif action == "trailers":
            respond(response_out, [b"body\n"], trailers=Fields.from_list([("x-checksum", b"42")]))
        elif action == "grow":
            # grow?MIB: that much memory before the head is set.
            hog = bytearray(int(query) << 20)
            respond(response_out, [str(len(hog)).encode()])
        elif action == "grow-after":
            respond(response_out, [b"partial"], then=lambda: bytearray(int(query) << 20))
        elif action == "late":
            # 64 KiB at once, then the rest of 16 MiB after a pause.
            first = 64 << 10
            respond(response_out, [b"x" * first, b"y" * ((16 << 20) - first)], pause=0.2)
        elif action == "unfinished":
            # A body written, kept, and neither finished nor dropped.
            resp = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
            body = resp.body()
            ResponseOutparam.set(response_out, Ok(resp))
            out = body.write()
            out.blocking_write_and_flush(b"partial")
            left_open.append((body, out))
        elif action == "fetch":
            # fetch?URL (percent-encoded): the outgoing request's outcome.
            respond(response_out, [fetch(urllib.parse.unquote(query))])
        elif action == "fetch-keep":
            kept_fetches.append(start_fetch(urllib.parse.unquote(query)))
            respond(response_out, [b"kept"])
        elif action == "fetch-kept":
            respond(response_out, [outcome(kept_fetches.pop())])
        elif action == "spin":
            while True:
                pass
        else:
            respond(response_out, [b"unknown action\n"], status=404)
