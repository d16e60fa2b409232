"""A Flask application for the end-to-end tests of scripts/build-wsgi and
python/mod_wasm_wsgi.py (tests/tests/wsgi.rs): each route shows one thing
the WSGI server must get right."""

import hashlib
import time
import urllib.error
import urllib.request

from flask import Flask, Response, abort, jsonify, redirect, request, stream_with_context, url_for

app = Flask(__name__)

# Requests this instance has served: 1 every time unless instances are
# reused (WasmInstanceReuse).
served = 0


@app.before_request
def count():
    global served
    served += 1


@app.get("/count")
def counter():
    return str(served)


@app.get("/user/<name>/<int:n>")
def user(name, n):
    return jsonify(name=name, n=n, twice=2 * n)


@app.get("/query")
def query():
    return jsonify({k: request.args.getlist(k) for k in request.args})


@app.post("/form")
def form():
    return jsonify({k: request.form.getlist(k) for k in request.form})


@app.post("/json")
def json_echo():
    data = request.get_json()
    return jsonify(got=data, keys=sorted(data) if isinstance(data, dict) else None)


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(name=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.get("/redirect")
def to_user():
    return redirect(url_for("user", name="moved", n=1))


@app.get("/status/<int:code>")
def status(code):
    return f"status {code}, on purpose\n", code, {"X-Custom": "yes"}


@app.get("/utf8")
def utf8():
    return Response("Grüße, 世界, ☕\n", content_type="text/plain; charset=utf-8")


@app.get("/fail")
def fail():
    raise RuntimeError("the WSGI probe fails on purpose")


@app.get("/stream")
def stream():
    def chunks():
        for i in range(5):
            if i:
                time.sleep(0.2)
            yield f"chunk {i}\n"

    return Response(chunks(), content_type="text/plain")


@app.get("/stream-fail")
def stream_fail():
    def chunks():
        yield "partial\n"
        raise RuntimeError("the WSGI probe fails mid-stream on purpose")

    return Response(stream_with_context(chunks()), content_type="text/plain")


@app.route("/environ", methods=["GET", "POST"])
def environ():
    env = request.environ
    keys = ["SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "REMOTE_ADDR",
            "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "CONTENT_TYPE",
            "CONTENT_LENGTH", "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess",
            "wsgi.run_once", "wsgi.input_terminated"]
    shown = {k: env[k] for k in keys if k in env}
    shown["wsgi.version"] = list(env["wsgi.version"])
    shown["wsgi.errors"] = type(env["wsgi.errors"]).__name__
    shown["HTTP"] = {k: v for k, v in env.items() if k.startswith("HTTP_")}
    shown["url_root"] = request.url_root
    return jsonify(shown)


@app.route("/<path:anything>/environ")
def environ_below(anything):
    return environ()


@app.post("/chunks")
def chunks():
    """Reads wsgi.input in pieces of ?size bytes, at most ?max of them, and
    says how many it took: the body is read only as far as asked."""
    size = int(request.args.get("size", "1000"))
    most = int(request.args.get("max", "-1"))
    stream = request.environ["wsgi.input"]
    count = total = 0
    digest = hashlib.sha256()
    while count != most and (piece := stream.read(size)):
        count += 1
        total += len(piece)
        digest.update(piece)
    return jsonify(chunks=count, bytes=total, sha256=digest.hexdigest())


@app.post("/lines")
def lines():
    stream = request.environ["wsgi.input"]
    first = stream.readline()
    rest = list(stream)
    return jsonify(first=first.decode(), rest=[line.decode() for line in rest])


@app.get("/fetch")
def fetch():
    url = request.args["url"]
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return jsonify(status=r.status, body=r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        return jsonify(status=e.code, error=str(e))
    except urllib.error.URLError as e:
        return jsonify(error=str(e.reason))


@app.get("/missing")
def missing():
    abort(404)


def raw_failures(wsgi_app):
    """WSGI middleware outside Flask, whose own error handling would turn
    an exception into its 500 page: these fail in the server's hands."""

    def middleware(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/raw/fail-before":
            raise RuntimeError("the WSGI probe fails before its head on purpose")
        if path == "/raw/fail-after":
            def body():
                yield b"partial\n"
                raise RuntimeError("the WSGI probe fails after its head on purpose")

            start_response("200 OK", [("Content-Type", "text/plain")])
            return body()
        if path == "/raw/write":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"written, ")
            return [b"", b"then returned\n"]
        if path == "/raw/empty":
            start_response("204 No Content", [("X-Empty", "yes")])
            return []
        return wsgi_app(environ, start_response)

    return middleware


app.wsgi_app = raw_failures(app.wsgi_app)
