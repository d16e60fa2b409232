// The JavaScript hello component: "Hello from JavaScript, " and the
// request's path with its query, as text (componentize-js's fetch event;
// the twin of guests/http/hello.py).
addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  event.respondWith(new Response(`Hello from JavaScript, ${url.pathname}${url.search}`, {
    headers: { 'content-type': 'text/plain' },
  }));
});
