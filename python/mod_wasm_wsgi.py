"""A WSGI server (PEP 3333) inside a wasi:http 0.2 component.

scripts/build-wsgi bundles this module with a WSGI application and an entry
module that imports both at build time:

    import mod_wasm_wsgi
    from myapp import app
    IncomingHandler = mod_wasm_wsgi.serve(app)

componentize-py pre-initializes the component: the interpreter, this module
and the application are imported once, when the component is built, and
every request starts from that snapshot (or, with WasmInstanceReuse, from
the state the previous request left behind; nothing of a request is kept
here between two of them).

A component has no filesystem and no sockets at run time, which the
application cannot be expected to know. This module therefore

- imports at build time the standard modules that libraries import lazily
  (PRELOADED below): at run time there is no file to import them from;
- keeps the files of `tempfile` in memory when there is no directory to put
  them in (Werkzeug spools a form upload over 500 KiB to one);
- sends `urllib.request`'s HTTP requests through wasi:http's
  outgoing-handler, so that `urllib.request.urlopen` works as usual.
"""

import importlib
import io
import http.client
import re
import sys
import tempfile
import traceback
import urllib.error
import urllib.parse
import urllib.request
import urllib.response

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, types
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    RequestOptions,
    ResponseOutparam,
)

# Standard modules imported lazily by the standard library itself or by
# common packages, imported here so that they are in the snapshot. Found by
# running Flask and Werkzeug: "unknown encoding: idna" was the first
# (Werkzeug encodes host names with the idna codec, which `codecs` imports
# on first use).
PRELOADED = (
    # Codecs: `str.encode("idna")` and friends import them on first use.
    "encodings.idna",
    "encodings.punycode",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8_sig",
    "encodings.utf_16",
    "encodings.utf_32",
    "encodings.unicode_escape",
    "encodings.raw_unicode_escape",
    "stringprep",
    "unicodedata",
    # Imported inside functions: email headers and dates, JSON, MIME types,
    # UUIDs, hashing, decimal numbers in JSON, dataclasses' helpers.
    "email.feedparser",
    "email.parser",
    "email.message",
    "email.headerregistry",
    "email._header_value_parser",
    "email.policy",
    "json.decoder",
    "json.encoder",
    "mimetypes",
    "uuid",
    "hashlib",
    "hmac",
    "secrets",
    "decimal",
    "zlib",
    "gzip",
    "base64",
    "datetime",
    "zoneinfo",
    "calendar",
    "locale",
    "logging.handlers",
)

# wasi:io allows at most 4096 bytes per blocking_write_and_flush.
WRITE_MAX = 4096

# What one blocking_read of a body asks for.
READ_CHUNK = 65536

# The body of the answer to an application that failed before its head went
# out; the reason goes to stderr, never to the client.
FAILURE_BODY = b"Internal Server Error\n"

# Headers the server adds itself; they never reach an application as HTTP_*.
CLIENT_ADDR_HEADER = "wasm-client-addr"
BASE_PATH_HEADER = "wasm-base-path"


def preload(names):
    """Imports each module of `names` (done at build time)."""
    for name in names:
        importlib.import_module(name)


# Times each warm-up request is made: enough for CPython to specialize the
# bytecode the request runs (it does so after a few executions).
WARM_ROUNDS = 3


def warm(app, requests):
    """Calls `app` with each of `requests` ("METHOD PATH", or "METHOD PATH
    CONTENT-TYPE BODY") at build time, WARM_ROUNDS times, so that what it
    does on its first requests (building caches, compiling templates,
    specializing bytecode) is done once, in the snapshot, instead of in
    every fresh instance. Exits when one fails or answers 4xx or 5xx."""
    for text in requests:
        parts = text.split(" ", 3)
        if len(parts) not in (2, 4) or not parts[1].startswith("/"):
            sys.exit(f"build-wsgi: warm-up request {text!r} is not 'METHOD /PATH [CONTENT-TYPE BODY]'")
        method, target = parts[0].upper(), parts[1]
        body = parts[3].encode() if len(parts) == 4 else b""
        path, _, query = target.partition("?")
        for _ in range(WARM_ROUNDS):
            environ = {
                "REQUEST_METHOD": method,
                "SCRIPT_NAME": "",
                "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
                "QUERY_STRING": query,
                "SERVER_NAME": "localhost",
                "SERVER_PORT": "80",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": "127.0.0.1",
                "REMOTE_PORT": "0",
                "HTTP_HOST": "localhost",
                **wsgi_keys("http", io.BytesIO(body)),
            }
            if len(parts) == 4:
                environ["CONTENT_TYPE"] = parts[2]
                environ["CONTENT_LENGTH"] = str(len(body))
            status = []

            def start_response(line, headers, exc_info=None):
                status.append(line)
                return lambda data: None

            result = app(environ, start_response)
            try:
                for _ in result:
                    pass
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if not status or not "200" <= status[-1][:3] < "400":
                sys.exit(f"build-wsgi: warm-up request {text!r} answered "
                         f"{status[-1] if status else 'without a status'}")


def serve(app):
    """The wasi:http handler class that serves the WSGI callable `app`."""

    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
            Exchange(app, request, response_out).run()

    return IncomingHandler


# The request: environ and wsgi.input.


def method_name(method):
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.split("_", 1)[1].upper()


def scheme_name(scheme):
    if scheme is None or isinstance(scheme, types.Scheme_Http):
        return "http"
    if isinstance(scheme, types.Scheme_Https):
        return "https"
    return scheme.value


def split_host_port(text, default_port):
    """(host, port) of `host:port`, `[v6]:port`, or `v6:port` as the server
    writes wasm-client-addr (its port always present); an IPv6 host loses
    its brackets."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, port or default_port
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text, default_port
    return host, port


def script_and_path(base_path, path):
    """SCRIPT_NAME and PATH_INFO: the location's path, if `path` is inside
    it (at a segment boundary), and the rest."""
    script = base_path.rstrip("/")
    if script and (path == script or path.startswith(script + "/")):
        return script, path[len(script):]
    return "", path


def header_values(fields):
    """Each header's name (lower case) and its values joined, in order."""
    joined = {}
    for name, value in fields.entries():
        joined.setdefault(name.lower(), []).append(value.decode("latin-1"))
    return {
        name: ("; " if name == "cookie" else ", ").join(values)
        for name, values in joined.items()
    }


def wsgi_keys(scheme, wsgi_input):
    """The wsgi.* keys of an environ: what this server is (one request at a
    time per process) and where the body and errors go."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": wsgi_input,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }


def build_environ(request, wsgi_input):
    headers = header_values(request.headers())
    scheme = scheme_name(request.scheme())
    target = request.path_with_query() or "/"
    raw_path, _, query = target.partition("?")
    # PEP 3333: the decoded bytes of the path, as a latin-1 str.
    path = urllib.parse.unquote_to_bytes(raw_path).decode("latin-1")
    script_name, path_info = script_and_path(headers.pop(BASE_PATH_HEADER, ""), path)
    default_port = "443" if scheme == "https" else "80"
    server_name, server_port = split_host_port(request.authority() or "localhost", default_port)
    remote_addr, remote_port = split_host_port(headers.pop(CLIENT_ADDR_HEADER, ""), "")
    environ = {
        "REQUEST_METHOD": method_name(request.method()),
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": remote_port,
        **wsgi_keys(scheme, wsgi_input),
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ["HTTP_" + key] = value
    return environ


def drop(resource):
    """Releases a wasi resource now rather than when it is collected (a
    child stream must go before its body)."""
    if resource is not None:
        resource.__exit__(None, None, None)


class BodyStream:
    """An incoming body (of the request, or of the response to an outgoing
    request) as a file: read(n) asks wasi:io for at most the n bytes asked,
    so nothing is read ahead of the reader (a body over LimitRequestBody
    fails only when it is read that far); readline reads ahead at most a
    chunk."""

    def __init__(self, take_body, owner=None):
        # The body is taken on the first read: an application that never
        # reads it leaves it to the server.
        self._take_body = take_body
        # What the body is a child of, kept alive while it is read.
        self._owner = owner
        self._body = None
        self._stream = None
        self._buffer = b""
        self._eof = False
        self.closed = False

    def _read_chunk(self, size):
        """At most `size` bytes more of the body; b"" at its end."""
        if self._eof:
            return b""
        if self._stream is None:
            self._body = self._take_body()
            self._stream = self._body.stream()
        try:
            return self._stream.blocking_read(size)
        except Err:
            # The end of the body (or a broken one: the server logs that).
            self._eof = True
            return b""

    def read(self, size=-1):
        if size is None or size < 0:
            parts = [self._buffer]
            while chunk := self._read_chunk(READ_CHUNK):
                parts.append(chunk)
            self._buffer = b""
            return b"".join(parts)
        parts, have = [self._buffer[:size]], len(self._buffer[:size])
        self._buffer = self._buffer[size:]
        # Fewer than asked only at the end of the body: Werkzeug's
        # multipart parser and others take a short read for the end.
        while have < size and (chunk := self._read_chunk(size - have)):
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def readline(self, size=-1):
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buffer.find(b"\n") + 1
            if end == 0 and limit is not None and len(self._buffer) >= limit:
                end = limit
            if end:
                break
            want = READ_CHUNK if limit is None else limit - len(self._buffer)
            chunk = self._read_chunk(want)
            if not chunk:
                end = len(self._buffer)
                break
            self._buffer += chunk
        if limit is not None:
            end = min(end, limit)
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line

    def readlines(self, hint=-1):
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        return iter(self.readline, b"")

    def readable(self):
        return True

    def close(self):
        drop(self._stream)
        drop(self._body)
        self._stream = self._body = self._owner = None
        self._eof = self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The response.


class Exchange:
    """One request and its response: every per-request object lives here,
    so that an instance serving many requests keeps nothing of them."""

    def __init__(self, app, request, response_out):
        self.app = app
        self.request = request
        self.response_out = response_out
        self.status = None
        self.headers = None
        self.head_sent = False
        # The response's body and its stream, from the head until the body
        # is finished.
        self.body = None
        self.stream = None

    def run(self):
        wsgi_input = BodyStream(self.request.consume)
        try:
            self.call_app(build_environ(self.request, wsgi_input))
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not self.head_sent:
                self.fail()
            # After the head no status can change. The body is left
            # unfinished, and dropped unfinished below, which the server
            # takes for a failed response: it cuts the connection rather
            # than end the response as if it were whole.
        finally:
            wsgi_input.close()
            drop(self.stream)
            drop(self.body)

    def call_app(self, environ):
        result = self.app(environ, self.start_response)
        try:
            for chunk in result:
                if chunk:
                    self.write(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not self.head_sent:
            self.send_head()
        self.finish()

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if not re.fullmatch(r"[1-9][0-9]{2}( .*)?", status):
            raise ValueError(f"WSGI status {status!r} is not 'NNN reason'")
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"WSGI header {name!r}: {value!r} is not a pair of str")
        self.status = int(status[:3])
        self.headers = list(headers)
        return self.write

    def write(self, data):
        if self.status is None:
            raise AssertionError("the WSGI application wrote before start_response")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"the WSGI application wrote {type(data).__name__}, not bytes")
        if not self.head_sent:
            self.send_head()
        for i in range(0, len(data), WRITE_MAX):
            self.stream.blocking_write_and_flush(bytes(data[i:i + WRITE_MAX]))

    def send_head(self):
        if self.status is None:
            raise AssertionError("the WSGI application returned without calling start_response")
        fields = Fields()
        for name, value in self.headers:
            try:
                fields.append(name.lower(), value.encode("latin-1"))
            except Err as e:
                # A hop-by-hop header (forbidden by PEP 3333 too) or a
                # malformed one: the rest of the response is still good.
                print(f"mod_wasm_wsgi: header {name!r} dropped ({type(e.value).__name__})",
                      file=sys.stderr)
        response = OutgoingResponse(fields)
        response.set_status_code(self.status)
        self.body = response.body()
        self.stream = self.body.write()
        ResponseOutparam.set(self.response_out, Ok(response))
        self.head_sent = True

    def finish(self):
        drop(self.stream)
        body, self.body, self.stream = self.body, None, None
        OutgoingBody.finish(body, None)

    def fail(self):
        response = OutgoingResponse(Fields.from_list([
            ("content-type", b"text/plain; charset=utf-8"),
            ("content-length", str(len(FAILURE_BODY)).encode()),
        ]))
        response.set_status_code(500)
        body = response.body()
        ResponseOutparam.set(self.response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(FAILURE_BODY)
        OutgoingBody.finish(body, None)


# Files of tempfile in memory.

_disk_temporary_file = tempfile.TemporaryFile


def temporary_file(mode="w+b", buffering=-1, encoding=None, newline=None,
                   suffix=None, prefix=None, dir=None, *, errors=None):
    """tempfile.TemporaryFile, in memory when no directory can hold it (a
    component without WasmDir has none)."""
    try:
        return _disk_temporary_file(mode, buffering, encoding, newline,
                                    suffix, prefix, dir, errors=errors)
    except OSError:
        pass
    if "b" in mode:
        return io.BytesIO()
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors=errors, newline=newline)


# Outbound HTTP through wasi:http.

# The wasi:http error-code names that are acronyms, upper case in the WIT.
ACRONYMS = {"dns": "DNS", "ip": "IP", "tls": "TLS", "http": "HTTP", "uri": "URI"}

# Request headers that wasi:http does not take from a guest: the authority
# carries the host, the server frames the message.
NOT_SENT = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
            "upgrade", "te", "trailer"}


def error_code_name(code):
    """The WIT name of a wasi:http error-code, as in the specification:
    ErrorCode_HttpRequestDenied -> "HTTP-request-denied"."""
    words = re.findall(r"[A-Z][a-z0-9]*", type(code).__name__.split("_", 1)[1])
    return "-".join(ACRONYMS.get(w.lower(), w.lower()) for w in words)


class WasiHttpError(OSError):
    """Why wasi:http could not make a request: the reason of the URLError
    urllib raises. `code` is the wasi:http error-code itself."""

    def __init__(self, code):
        self.code = code
        detail = getattr(code, "value", None)
        name = error_code_name(code)
        super().__init__(f"{name} ({detail})" if detail is not None else name)


def method_variant(name):
    variant = getattr(types, "Method_" + name.capitalize(), None)
    if variant is None or name != name.upper():
        return types.Method_Other(name)
    return variant()


def request_options(timeout):
    """RequestOptions with urllib's timeout (seconds) for every phase, or
    None for the host's defaults."""
    if not isinstance(timeout, (int, float)):
        return None
    options = RequestOptions()
    nanoseconds = int(timeout * 1e9)
    for set_timeout in (options.set_connect_timeout, options.set_first_byte_timeout,
                        options.set_between_bytes_timeout):
        try:
            set_timeout(nanoseconds)
        except Err:
            pass  # The host does not support that timeout: its own applies.
    return options


def request_body_chunks(data):
    if data is None:
        return
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
    elif hasattr(data, "read"):
        while chunk := data.read(READ_CHUNK):
            yield chunk
    else:
        yield from data


def send_outgoing(req):
    """Sends urllib request `req` with wasi:http; the response's head."""
    headers = dict(req.unredirected_hdrs)
    headers.update((k, v) for k, v in req.headers.items() if k not in headers)
    body = None
    try:
        # Each of these refuses what wasi:http does not take (a bad
        # header, an authority or path it cannot parse): a URLError too.
        fields = Fields()
        for name, value in headers.items():
            if name.lower() not in NOT_SENT:
                fields.append(name.lower(), str(value).encode("latin-1"))
        outgoing = OutgoingRequest(fields)
        outgoing.set_method(method_variant(req.get_method()))
        outgoing.set_scheme(types.Scheme_Https() if req.type == "https" else types.Scheme_Http())
        outgoing.set_authority(req.host)
        outgoing.set_path_with_query(req.selector or "/")
        body = outgoing.body()
        future = outgoing_handler.handle(outgoing, request_options(req.timeout))
        with body.write() as stream:
            for chunk in request_body_chunks(req.data):
                for i in range(0, len(chunk), WRITE_MAX):
                    stream.blocking_write_and_flush(chunk[i:i + WRITE_MAX])
        OutgoingBody.finish(body, None)
        body = None
    except Err as e:
        raise urllib.error.URLError(WasiHttpError(e.value)) from None
    finally:
        drop(body)
    with future:
        with future.subscribe() as ready:
            ready.block()
        result = future.get()
    # An option of a result (got once) of a result (the response or why not).
    if isinstance(result.value, Err):
        raise urllib.error.URLError(WasiHttpError(result.value.value))
    return result.value.value


class SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, but Authorization and Cookie go only to the
    scheme, host and port they were sent to."""

    CREDENTIALS = ("authorization", "cookie", "proxy-authorization")

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(new.full_url) != origin(req.full_url):
            for name in list(new.headers):
                if name.lower() in self.CREDENTIALS:
                    del new.headers[name]
            for name in list(new.unredirected_hdrs):
                if name.lower() in self.CREDENTIALS:
                    del new.unredirected_hdrs[name]
        return new


def origin(url):
    parts = urllib.parse.urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class WasiHttpHandler(urllib.request.HTTPHandler):
    """urllib's handler of http and https URLs, through wasi:http's
    outgoing-handler. Being an HTTPHandler, it takes the default one's place
    in build_opener; the processors (cookies, redirects, errors) are
    urllib's own."""

    # Before urllib's HTTPSHandler, where the interpreter has one.
    handler_order = 499

    def http_open(self, req):
        return self.wasi_open(req)

    def https_open(self, req):
        return self.wasi_open(req)

    https_request = urllib.request.AbstractHTTPHandler.do_request_

    def wasi_open(self, req):
        if not req.host:
            raise urllib.error.URLError("no host given")
        response = send_outgoing(req)
        message = http.client.HTTPMessage()
        for name, value in response.headers().entries():
            message[name] = value.decode("latin-1")
        status = response.status()
        fp = BodyStream(response.consume, owner=response)
        result = urllib.response.addinfourl(fp, message, req.get_full_url(), status)
        result.msg = http.client.responses.get(status, "")
        return result


def install():
    """Makes the standard library fit a component without files or sockets
    (done at import, so at build time)."""
    preload(PRELOADED)
    tempfile.TemporaryFile = temporary_file
    # No proxies (an https_proxy in WasmEnv would otherwise get the
    # origin's requests, credentials included), and redirects that drop
    # credentials when they leave the origin.
    urllib.request.install_opener(urllib.request.build_opener(
        urllib.request.ProxyHandler({}), SameOriginCredentials, WasiHttpHandler))


install()
