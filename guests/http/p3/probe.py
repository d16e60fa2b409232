"""A wasi:http 0.3 component (the wasi:http/service world) for the tests:
what it does depends on the path after its <Location> (the last path
segment). Its body is written by a task of its own that goes on after
`handle` returned, as 0.3 guests do."""

import json

import componentize_py_async_support as tasks
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import monotonic_clock, wasi_http_types as types
from wit_world.imports.wasi_http_types import Fields, Request, Response

# Requests this instance has served: 1 every time unless instances are
# reused (WasmInstanceReuse).
served = 0

# What "unfinished" keeps of a response, so that it is never finished.
left_open = []


def method_name(m):
    if isinstance(m, types.Method_Other):
        return m.value
    return type(m).__name__.split("_", 1)[1].upper()


async def read_all(request):
    _, done = wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))
    body, _trailers = Request.consume_body(request, done)
    chunks = []
    with body:
        while chunk := await body.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def fail():
    raise RuntimeError("the probe fails on purpose")


def respond(parts, status=200, ctype=b"text/plain", pause_ms=0, then=None, headers=(),
            trailers=None):
    """The response, its body written by a task that outlives `handle`."""
    tx, rx = wit_world.byte_stream()
    ttx, trx = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
        lambda: Ok(None))

    async def write():
        with tx:
            for i, part in enumerate(parts):
                if i and pause_ms:
                    await monotonic_clock.wait_for(pause_ms * 1_000_000)
                await tx.write_all(part)
            if then:
                # Long enough for the head and the bytes written to be out.
                await monotonic_clock.wait_for(200_000_000)
                then()
        await ttx.write(Ok(Fields.from_list(trailers) if trailers else None))

    tasks.spawn(write())
    response, _ = Response.new(Fields.from_list([("content-type", ctype), *headers]), rx, trx)
    response.set_status_code(status)
    return response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        global served
        served += 1
        path = request.get_path_with_query() or "/"
        action, _, query = path.rsplit("/", 1)[-1].partition("?")
        if action == "hello":
            return respond([b"Hello from Python (wasi:http 0.3), " + path.encode()])
        if action == "head":
            head = {
                "method": method_name(request.get_method()),
                "scheme": type(request.get_scheme()).__name__,
                "authority": request.get_authority(),
                "path": path,
                "headers": [[k, v.decode("latin-1")] for k, v in request.get_headers().copy_all()],
            }
            return respond([json.dumps(head).encode()], ctype=b"application/json")
        if action == "echo":
            return respond([await read_all(request)], ctype=b"application/octet-stream")
        if action == "slow":
            return respond([b"first\n", b"second\n"], pause_ms=1000)
        if action == "big":
            # big?MIB: that many MiB, one buffer written again and again.
            mib = int(query or "1")
            return respond([b"x" * (64 << 10)] * (mib << 4))
        if action == "trap-before":
            fail()
        if action == "trap-after":
            return respond([b"partial"], then=fail)
        if action == "count":
            return respond([str(served).encode()])
        if action == "length":
            # length?SAID,WROTE: a content-length of SAID, WROTE bytes written.
            said, wrote = (int(n) for n in query.split(","))
            return respond([b"x" * wrote], headers=[("content-length", str(said).encode())])
        if action == "trailers":
            return respond([b"body\n"], trailers=[("x-checksum", b"42")])
        if action == "unfinished":
            # A body written, kept, and neither finished nor dropped.
            tx, rx = wit_world.byte_stream()
            ttx, trx = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
                lambda: Ok(None))

            async def write():
                await tx.write_all(b"partial")
                left_open.append((tx, ttx))

            tasks.spawn(write())
            response, _ = Response.new(Fields.from_list([]), rx, trx)
            return response
        if action == "spin":
            while True:
                pass
        return respond([b"unknown action\n"], status=404)
