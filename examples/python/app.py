# A CGI-style Python application for mod_wasm: a request viewer and a small
# form that stores nothing. It runs unchanged under CPython 3.12 (WASI) and
# MicroPython, so it uses only what both have: os.getenv, sys.stdin, json.
#
# What it answers, by the "action" query parameter:
#   (none)     an HTML page showing the request and a form (POST echoes it)
#   query      the query string's parameters as text
#   json       POST a JSON object with "numbers": the sum as JSON
#   status     a custom status code (418)
#   redirect   a redirect to an absolute URL (the server answers 302)
#   local      a local redirect (the server redirects internally)
#   utf8       a UTF-8 body
#   error      an uncaught exception: 500, traceback in Apache's error log
import json
import os
import sys

SHOWN = ("REQUEST_METHOD", "REQUEST_URI", "SCRIPT_NAME", "PATH_INFO",
         "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_ADDR",
         "HTTP_USER_AGENT", "SERVER_SOFTWARE")


def unquote(text):
    """Decodes application/x-www-form-urlencoded text (MicroPython has no urllib)."""
    raw = text.replace("+", " ").encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 37 and i + 2 < len(raw):  # "%"
            try:
                out.append(int(raw[i + 1:i + 3].decode(), 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return bytes(out).decode()


def parse_form(text):
    fields = []
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            fields.append((unquote(name), unquote(value)))
    return fields


def escape(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&quot;"))


def read_body():
    length = int(os.getenv("CONTENT_LENGTH") or 0)
    if not length:
        return ""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    data = stream.read(length)
    return data.decode() if isinstance(data, bytes) else data


def respond(body, content_type="text/plain; charset=utf-8", status=None, headers=()):
    if status:
        print("Status: " + status)
    for h in headers:
        print(h)
    print("Content-Type: " + content_type)
    print()
    sys.stdout.write(body)


def page(fields):
    rows = "".join("<tr><th>%s</th><td>%s</td></tr>" % (k, escape(os.getenv(k) or ""))
                   for k in SHOWN)
    posted = ""
    if fields:
        posted = "<h2>You sent</h2><ul>%s</ul>" % "".join(
            "<li><b>%s</b>: %s</li>" % (escape(k), escape(v)) for k, v in fields)
    return ("<!doctype html><meta charset=utf-8><title>mod_wasm Python demo</title>"
            "<h1>Hello from Python %s in WebAssembly</h1>"
            "<h2>Your request</h2><table>%s</table>%s"
            "<h2>A form (nothing is stored)</h2>"
            "<form method=post><input name=name placeholder=name> "
            "<input name=message placeholder=message> <button>Send</button></form>"
            % (escape(sys.version.split()[0]), rows, posted))


def main():
    query = dict(parse_form(os.getenv("QUERY_STRING") or ""))
    action = query.get("action", "")
    method = os.getenv("REQUEST_METHOD")
    if action == "query":
        respond("".join("%s=%s\n" % kv for kv in sorted(query.items())))
    elif action == "json":
        data = json.loads(read_body() or "{}")
        numbers = data.get("numbers", [])
        respond(json.dumps({"count": len(numbers), "sum": sum(numbers)}),
                "application/json")
    elif action == "status":
        respond("I am a teapot\n", status="418 I'm a teapot")
    elif action == "redirect":
        respond("", headers=("Location: http://example.com/from-python",))
    elif action == "local":
        respond("", headers=("Location: " + (os.getenv("SCRIPT_NAME") or "") + "?action=utf8",))
    elif action == "utf8":
        respond("h\u00e9llo w\u00f6rld \u2713\n")
    elif action == "error":
        raise ValueError("this request asked for an error")
    else:
        fields = parse_form(read_body()) if method == "POST" else []
        respond(page(fields), "text/html; charset=utf-8")


main()
