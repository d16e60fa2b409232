// The JavaScript probe of tests/tests/js.rs: a fetch-event app with one
// route per thing the tests check, under whatever location it is set in
// (the routes are the path's last segment).

// Counts the requests this instance served: 1 every time unless the
// server reuses instances (WasmInstanceReuse).
let served = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function json(value, status = 200) {
  return new Response(JSON.stringify(value), {
    status,
    headers: { 'content-type': 'application/json' },
  });
}

// The request as the guest sees it, server-added headers included.
function echo(request, url) {
  return json({
    method: request.method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    headers: Object.fromEntries(request.headers),
  });
}

async function sum(request) {
  const { numbers } = await request.json();
  if (!Array.isArray(numbers) || !numbers.every((n) => typeof n === 'number')) {
    return json({ error: 'numbers must be an array of numbers' }, 400);
  }
  return json({ count: numbers.length, sum: numbers.reduce((a, b) => a + b, 0) });
}

// Length, byte sum and SHA-256 of a body of any size: the test compares
// them with its own, so nothing of the body needs to come back.
async function digest(request) {
  const body = new Uint8Array(await request.arrayBuffer());
  let byteSum = 0;
  for (const b of body) {
    byteSum += b;
  }
  const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', body));
  const sha256 = Array.from(hash, (b) => b.toString(16).padStart(2, '0')).join('');
  return json({ length: body.length, byteSum, sha256 });
}

// Chunks a pause apart, so that a client sees each before the next is
// written: the test times their arrival.
function stream(url) {
  const chunks = Number(url.searchParams.get('chunks') ?? 4);
  const pause = Number(url.searchParams.get('ms') ?? 200);
  const encoder = new TextEncoder();
  let sent = 0;
  const body = new ReadableStream({
    async pull(controller) {
      if (sent > 0) {
        await sleep(pause);
      }
      controller.enqueue(encoder.encode(`chunk ${sent}\n`));
      sent += 1;
      if (sent === chunks) {
        controller.close();
      }
    },
  });
  return new Response(body, { headers: { 'content-type': 'text/plain' } });
}

// An outgoing request to ?url=: what the guest got back, or the error it
// was given as text (the server refuses outgoing requests by default).
async function outbound(url) {
  try {
    const r = await fetch(url.searchParams.get('url'));
    return json({ status: r.status, body: await r.text() });
  } catch (e) {
    return json({ error: String(e) });
  }
}

async function route(request) {
  const url = new URL(request.url);
  switch (url.pathname.split('/').pop()) {
    case 'echo':
      return echo(request, url);
    case 'sum':
      return sum(request);
    case 'digest':
      return digest(request);
    case 'stream':
      return stream(url);
    case 'status':
      return new Response('a custom status\n', {
        status: Number(url.searchParams.get('code') ?? 418),
        headers: { 'content-type': 'text/plain', 'x-probe': 'status' },
      });
    case 'utf8':
      return new Response('héllo wörld ✓ 日本\n', {
        headers: { 'content-type': 'text/plain; charset=utf-8' },
      });
    case 'throw':
      throw new Error('the probe fails on purpose');
    case 'fetch':
      return outbound(url);
    case 'count':
      return new Response(String(served));
    default:
      return new Response(`no route ${url.pathname}\n`, { status: 404 });
  }
}

addEventListener('fetch', (event) => {
  served += 1;
  const url = new URL(event.request.url);
  // Thrown by the listener itself, not by the promise it answers with.
  if (url.pathname.endsWith('/throw-sync')) {
    throw new Error('the probe fails on purpose, synchronously');
  }
  event.respondWith(route(event.request));
});
