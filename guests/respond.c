/* Answers with what the query string asks for, to test CGI response rules:
 *   status    Status: 201 plus extra headers and two Set-Cookie
 *   abs       absolute Location (the server answers 302)
 *   local     local Location (the server redirects internally)
 *   notmod    Last-Modified in the past (for conditional requests)
 *   badheader a malformed header line
 *   big=N     a body of N bytes
 *   te        a Transfer-Encoding header of its own
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    const char *q = getenv("QUERY_STRING");

    if (!q) {
        q = "";
    }
    if (!strcmp(q, "status")) {
        fputs("Status: 201 Created\r\nX-Wasm: yes\r\nSet-Cookie: a=1\r\n"
              "Set-Cookie: b=2\r\nContent-Type: text/plain\r\n\r\ncreated\n",
              stdout);
    }
    else if (!strcmp(q, "abs")) {
        fputs("Location: http://example.com/elsewhere\r\n\r\n", stdout);
    }
    else if (!strcmp(q, "local")) {
        fputs("Location: /hello\r\n\r\n", stdout);
    }
    else if (!strcmp(q, "notmod")) {
        fputs("Last-Modified: Mon, 01 Jan 2001 00:00:00 GMT\r\n"
              "Content-Type: text/plain\r\n\r\nmodified\n", stdout);
    }
    else if (!strcmp(q, "te")) {
        fputs("Transfer-Encoding: gzip\r\nContent-Type: text/plain\r\n\r\n"
              "plain\n", stdout);
    }
    else if (!strcmp(q, "badheader")) {
        fputs("this is not a header\r\n\r\n", stdout);
    }
    else if (!strncmp(q, "big=", 4)) {
        static char chunk[65520];
        long n = atol(q + 4);
        size_t fill = n < (long)sizeof(chunk) ? (size_t)n : sizeof(chunk);
        /* Lay the alphabet down once, then double it by copying: filling
         * the chunk byte by byte would cost more than the request. */
        for (size_t i = 0; i < 26 && i < fill; i++) {
            chunk[i] = (char)('a' + i);
        }
        for (size_t done = 26; done < fill; done *= 2) {
            memcpy(chunk + done, chunk, done * 2 <= fill ? done : fill - done);
        }
        fputs("Content-Type: application/octet-stream\r\n\r\n", stdout);
        /* 65520 is a multiple of 26: the pattern runs on across chunks. */
        for (long sent = 0; sent < n; sent += sizeof(chunk)) {
            fwrite(chunk, 1, n - sent < (long)sizeof(chunk) ? (size_t)(n - sent)
                                                           : sizeof(chunk), stdout);
        }
    }
    else {
        fputs("Content-Type: text/plain\r\n\r\nok\n", stdout);
    }
    return 0;
}
