-- mod_lua's row in perf-scripts/compare: the same bytes as guests/hello.c.
function handle(r)
    r.content_type = "text/plain"
    r:puts("Hello, World!")
    return apache2.OK
end
