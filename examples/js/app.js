// A small web application in JavaScript, served by mod_wasm as a wasi:http
// component. Build and serve it:
//
//   scripts/build-js examples/js/app.js -o build/components/app-js-demo.wasm
//
//   <Location /app>
//     SetHandler wasm-handler
//     WasmModule /path/to/build/components/app-js-demo.wasm
//   </Location>
//
// Routes, under the location it is mounted at:
//   GET  /             a page with a form
//   POST /             the form's fields shown back (nothing is stored)
//   POST /api/sum      {"numbers": [1, 2, 3]} -> {"sum": 6}
//   GET  /stream       a few lines, written one by one, a pause apart
//
// Each request runs in a fresh instance: module-level state does not
// survive from one request to the next.

const encoder = new TextEncoder();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function html(body, status = 200) {
  return new Response(body, {
    status,
    headers: { 'content-type': 'text/html; charset=utf-8' },
  });
}

function json(value, status = 200, headers = {}) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { 'content-type': 'application/json', ...headers },
  });
}

function page(base, title, content) {
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>${escapeHtml(title)}</title>
  <style>
    body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
    label { display: block; margin-top: 0.75rem; }
    input, textarea { width: 100%; }
    dt { font-weight: bold; }
    code { background: #f3f3f3; padding: 0 0.2em; }
  </style>
</head>
<body>
  <h1>${escapeHtml(title)}</h1>
  ${content.trim()}
  <p><a href="${base}/">Home</a> · <a href="${base}/stream">A streamed response</a></p>
</body>
</html>
`;
}

function home(base, origin) {
  return html(page(base, 'JavaScript on mod_wasm', `
  <p>This page comes from a JavaScript fetch handler compiled to WebAssembly
  and run by Apache httpd.</p>
  <form method="post" action="${base}/">
    <label>Name <input name="name" required></label>
    <label>Message <textarea name="message" rows="3"></textarea></label>
    <p><button>Send</button></p>
  </form>
  <p>The JSON API: <code>curl -d '{"numbers":[1,2,3]}' ${origin}${base}/api/sum</code></p>`));
}

async function posted(base, request) {
  const type = request.headers.get('content-type') ?? '';
  if (!type.startsWith('application/x-www-form-urlencoded')) {
    return html(page(base, 'Unsupported form', '<p>Send the form above.</p>'), 415);
  }
  const fields = [...new URLSearchParams(await request.text())];
  const list = fields.length
    ? `<dl>${fields.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join('')}</dl>`
    : '<p>The form was empty.</p>';
  return html(page(base, 'You sent', `${list}\n  <p>Nothing was stored.</p>`));
}

async function sum(request) {
  if (request.method !== 'POST') {
    return json({ error: 'POST {"numbers": [...]}' }, 405, { allow: 'POST' });
  }
  let numbers;
  try {
    ({ numbers } = await request.json());
  } catch {
    return json({ error: 'the body is not JSON' }, 400);
  }
  if (!Array.isArray(numbers) || !numbers.every(Number.isFinite)) {
    return json({ error: '"numbers" must be an array of numbers' }, 400);
  }
  return json({ sum: numbers.reduce((a, b) => a + b, 0) });
}

// Each line goes out as it is written: the client sees the first before
// the last is made.
function stream() {
  const lines = ['Counting to five, a line every half second:', '1', '2', '3', '4', '5', 'Done.'];
  const body = new ReadableStream({
    async start(controller) {
      for (const [i, line] of lines.entries()) {
        if (i > 0) {
          await sleep(500);
        }
        controller.enqueue(encoder.encode(`${line}\n`));
      }
      controller.close();
    },
  });
  return new Response(body, { headers: { 'content-type': 'text/plain; charset=utf-8' } });
}

async function handle(request) {
  // The server says where the app is mounted: links and routes are
  // relative to it, so the app works under any <Location>.
  const base = (request.headers.get('wasm-base-path') ?? '').replace(/\/$/, '');
  const { origin, pathname } = new URL(request.url);
  const path = pathname.startsWith(base) ? pathname.slice(base.length) || '/' : pathname;

  if (path === '/' && request.method === 'GET') {
    return home(base, origin);
  }
  if (path === '/' && request.method === 'POST') {
    return posted(base, request);
  }
  if (path === '/api/sum') {
    return sum(request);
  }
  if (path === '/stream' && request.method === 'GET') {
    return stream();
  }
  return html(page(base, 'Not found', `<p>Nothing at <code>${escapeHtml(path)}</code>.</p>`), 404);
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
