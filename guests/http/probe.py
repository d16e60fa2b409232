"""A wasi:http component for the tests: what it does depends on the path
after its <Location> (the last path segment)."""

import json
import os
import time

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import types
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# wasi:io allows at most 4096 bytes per blocking_write_and_flush.
WRITE = 4096


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


def respond(response_out, parts, status=200, ctype=b"text/plain", pause=0.0, then=None):
    resp = OutgoingResponse(Fields.from_list([("content-type", ctype)]))
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
    OutgoingBody.finish(body, None)


def fail():
    raise RuntimeError("the probe fails on purpose")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
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
            mib = int(query or "1")
            respond(response_out, [b"x" * (1 << 20)] * mib)
        elif action == "trap-before":
            fail()
        elif action == "trap-after":
            respond(response_out, [b"partial"], then=fail)
        elif action == "spin":
            while True:
                pass
        else:
            respond(response_out, [b"unknown action\n"], status=404)
