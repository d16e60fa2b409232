"""A small Flask application, unmodified for mod_wasm: a page with a form
and a JSON API. Built into a component by

    scripts/build-wsgi app:app -s examples/flask -r examples/flask/requirements.txt \\
        -o build/components/flask-demo.wasm

and served from a <Location> (see docs/guests.md)."""

from flask import Flask, jsonify, render_template_string, request

app = Flask(__name__)

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Flask on mod_wasm</title></head>
<body>
  <h1>Flask on mod_wasm</h1>
  <p>This page comes from a Flask application compiled to a WebAssembly
     component and served by Apache httpd.</p>
  {% if submitted %}
    <h2>You sent</h2>
    <dl>
      {% for name, value in submitted.items() %}
        <dt>{{ name }}</dt><dd>{{ value }}</dd>
      {% endfor %}
    </dl>
  {% endif %}
  <form method="post" action="{{ url_for('index') }}">
    <label>Name <input name="name" value="{{ submitted.name if submitted else '' }}"></label>
    <label>Message <textarea name="message"></textarea></label>
    <button>Send</button>
  </form>
  <h2>API</h2>
  <ul>
    <li><code>POST {{ url_for('api_sum') }}</code> <code>{"numbers": [1, 2, 3]}</code>
        &rarr; <code>{"sum": 6}</code></li>
    <li><code>{{ url_for('api_echo') }}</code>: the request as JSON</li>
  </ul>
</body>
</html>
"""


@app.route("/", methods=["GET", "POST"])
def index():
    # Nothing is stored: the page shows what was just submitted, escaped by
    # Jinja.
    submitted = request.form.to_dict() if request.method == "POST" else None
    return render_template_string(PAGE, submitted=submitted)


@app.post("/api/sum")
def api_sum():
    data = request.get_json(silent=True)
    numbers = data.get("numbers") if isinstance(data, dict) else None
    if not isinstance(numbers, list) or not all(
        isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
    ):
        return jsonify(error='expected {"numbers": [...]}, a list of numbers'), 400
    return jsonify(sum=sum(numbers), count=len(numbers))


@app.route("/api/echo", methods=["GET", "POST", "PUT", "DELETE"])
def api_echo():
    return jsonify(
        method=request.method,
        path=request.path,
        args=request.args.to_dict(flat=False),
        headers={k: v for k, v in request.headers if k.lower() != "cookie"},
        json=request.get_json(silent=True),
        body_bytes=len(request.get_data()),
    )
