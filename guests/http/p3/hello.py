"""Hello, as a wasi:http 0.3 component (the wasi:http/service world)."""

import componentize_py_async_support as tasks
import wit_world
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Request, Response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        body = b"Hello from Python (wasi:http 0.3), " + (request.get_path_with_query() or "/").encode()
        tx, rx = wit_world.byte_stream()
        _, trailers = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
            lambda: Ok(None))

        # The body is read once the response is returned: written after.
        async def write():
            with tx:
                await tx.write_all(body)

        tasks.spawn(write())
        response, _ = Response.new(Fields.from_list([("content-type", b"text/plain")]), rx, trailers)
        return response
