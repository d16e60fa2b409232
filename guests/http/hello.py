from wit_world import exports
from wit_world.imports.types import (
    IncomingRequest, ResponseOutparam, OutgoingResponse, Fields, OutgoingBody,
)
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        resp = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = resp.body()
        ResponseOutparam.set(response_out, Ok(resp))
        with body.write() as stream:
            stream.blocking_write_and_flush(b"Hello from Python, " + request.path_with_query().encode())
        OutgoingBody.finish(body, None)
