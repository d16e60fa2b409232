# mod_wasm: build, demo, tests, install.
#
#   make run       install what is missing, build, start the demo server
#   make test      run every test (runtime unit tests + end-to-end against Apache)
#   make install   install into Apache (DESTDIR supported)
#
# One cargo profile (release) for everything: Wasmtime is built once.

SHELL       := /bin/bash
APXS        ?= apxs
CARGO       ?= cargo
CLANG       ?= clang
PORT        ?= 8080
BUILD       := build
PROFILE_DIR := target/release
LIBEXECDIR  := $(shell $(APXS) -q LIBEXECDIR 2>/dev/null)
SYSCONFDIR  ?= /etc/apache2
BINDIR      ?= /usr/local/bin

GUEST_SRC   := $(wildcard guests/*.c)
GUESTS      := $(patsubst guests/%.c,$(BUILD)/guests/%.wasm,$(GUEST_SRC))
RUNTIME_SRC := $(shell find runtime/src runtime/include -type f) runtime/Cargo.toml runtime/build.rs Cargo.toml

INTERP      := $(BUILD)/interp/micropython.wasm $(BUILD)/interp/python-3.12.0.wasm

# wasi:http components (guests/http/), built with registry toolchains.
PY_COMPONENTS := $(patsubst guests/http/%.py,$(BUILD)/components/%-py.wasm,$(wildcard guests/http/*.py))
PY3_COMPONENTS := $(patsubst guests/http/p3/%.py,$(BUILD)/components/%-py3.wasm,$(wildcard guests/http/p3/*.py))
JS_COMPONENTS := $(patsubst guests/http/js/%.js,$(BUILD)/components/%-js.wasm,$(wildcard guests/http/js/*.js))
C_COMPONENTS  := $(patsubst guests/http/c/%.c,$(BUILD)/components/%-c.wasm,$(filter-out %/response.c,$(wildcard guests/http/c/*.c)))
# Applications built with the commands users run: WSGI (Flask) apps with
# scripts/build-wsgi, JavaScript fetch-event apps with scripts/build-js.
APPS          := $(BUILD)/components/flask-demo.wasm $(BUILD)/components/wsgi-probe.wasm $(BUILD)/components/wsgi-probe-warm.wasm $(BUILD)/components/js-demo.wasm
WSGI_REQS     := examples/flask/requirements.txt
WSGI_DEPS     := python/mod_wasm_wsgi.py scripts/build-wsgi scripts/toolchain.sh $(WSGI_REQS) Cargo.lock

.PHONY: all deps run stop test unit e2e install clean fmt lint bench

all: $(BUILD)/mod_wasm.so $(BUILD)/mod_wasm-precompile $(GUESTS) $(INTERP) $(PY_COMPONENTS) $(PY3_COMPONENTS) $(C_COMPONENTS) $(JS_COMPONENTS) $(APPS)

# Interpreters come from PyPI, pinned and checksummed (never committed).
$(INTERP): scripts/fetch-interpreters
	scripts/fetch-interpreters

# Debian packages the build and the tests need (installed only when missing,
# only as root).
deps:
	@scripts/install-deps

$(BUILD)/libwasm_runtime.so: $(RUNTIME_SRC) Cargo.lock
	$(CARGO) build --release --locked -p wasm_runtime
	@mkdir -p $(BUILD)
	@# A new file, not a rewrite in place: a running server (make run, a
	@# perf script) maps this one, and rewriting it crashes its children.
	install -m 644 $(PROFILE_DIR)/libwasm_runtime.so $@

# Built by the same cargo run as the library, from the same crate: its cache
# entries are the server's.
$(BUILD)/mod_wasm-precompile: $(BUILD)/libwasm_runtime.so
	install -m 755 -s $(PROFILE_DIR)/mod_wasm-precompile $@

# The module finds libwasm_runtime.so next to itself ($ORIGIN): LoadModule
# alone is enough, no LD_LIBRARY_PATH.
SHIM_SRC    := $(wildcard mod_wasm_c/*.c)

$(BUILD)/mod_wasm.so: $(SHIM_SRC) mod_wasm_c/mod_wasm.h runtime/include/wasm_runtime.h $(BUILD)/libwasm_runtime.so
	cd mod_wasm_c && $(APXS) -c -Wc,-Wall -Wc,-Wextra -Wc,-Wno-unused-parameter \
	    -I ../runtime/include -o mod_wasm.so $(notdir $(SHIM_SRC)) \
	    -L../$(BUILD) -lwasm_runtime '-Wl,-rpath,\$$ORIGIN' >/dev/null
	install -m 644 mod_wasm_c/.libs/mod_wasm.so $@

$(BUILD)/components/%-py.wasm: guests/http/%.py scripts/build-components scripts/toolchain.sh Cargo.lock
	scripts/build-components $*-py

$(BUILD)/components/%-py3.wasm: guests/http/p3/%.py scripts/build-components scripts/toolchain.sh Cargo.lock
	scripts/build-components $*-py3

$(BUILD)/components/%-js.wasm: guests/http/js/%.js guests/http/js/package-lock.json scripts/build-components scripts/toolchain.sh Cargo.lock
	scripts/build-components $*-js

$(BUILD)/components/%-c.wasm: guests/http/c/%.c guests/http/c/response.c guests/http/c/response.h scripts/build-components scripts/toolchain.sh Cargo.lock
	scripts/build-components $*-c

$(BUILD)/components/flask-demo.wasm: examples/flask/app.py $(WSGI_DEPS)
	scripts/build-wsgi app:app -s examples/flask -r $(WSGI_REQS) -o $@ \
	    --warm 'GET /' --warm 'POST /api/sum application/json {"numbers":[1,2,3]}'

$(BUILD)/components/wsgi-probe.wasm: guests/wsgi/probe_app.py $(WSGI_DEPS)
	scripts/build-wsgi probe_app:app -s guests/wsgi -r $(WSGI_REQS) -o $@

# The probe with its first requests made at build time (tests/tests/wsgi.rs).
$(BUILD)/components/wsgi-probe-warm.wasm: guests/wsgi/probe_app.py $(WSGI_DEPS)
	scripts/build-wsgi probe_app:app -s guests/wsgi -r $(WSGI_REQS) -o $@ --warm 'GET /count'

$(BUILD)/components/js-demo.wasm: examples/js/app.js scripts/build-js scripts/toolchain.sh guests/http/js/package-lock.json
	scripts/build-js examples/js/app.js -o $@

$(BUILD)/guests/%.wasm: guests/%.c
	@mkdir -p $(dir $@)
	$(CLANG) --target=wasm32-wasi -O2 -s -o $@ $<

run: deps all
	@scripts/demo start $(PORT)

stop:
	@scripts/demo stop

# Some unit tests fork (as the server's parent does to compile) while other
# test threads run: an error's backtrace being captured by one of them at
# that moment would leave its lock held in the child for good. Errors need
# no backtrace; panics still print theirs (RUST_BACKTRACE).
export RUST_LIB_BACKTRACE := 0

test: deps all
	$(CARGO) test --release --locked --workspace --exclude mod_wasm_bench -- --test-threads=2

unit:
	$(CARGO) test --release --locked -p wasm_runtime

e2e: all
	$(CARGO) test --release --locked -p e2e -- --test-threads=2

install: all
	install -d $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(SYSCONFDIR)/mods-available
	install -m 644 $(BUILD)/libwasm_runtime.so $(DESTDIR)$(LIBEXECDIR)/libwasm_runtime.so
	install -m 644 $(BUILD)/mod_wasm.so $(DESTDIR)$(LIBEXECDIR)/mod_wasm.so
	sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|' conf/debian/wasm.load > $(DESTDIR)$(SYSCONFDIR)/mods-available/wasm.load
	install -m 644 conf/debian/wasm.conf $(DESTDIR)$(SYSCONFDIR)/mods-available/wasm.conf
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 $(BUILD)/mod_wasm-precompile $(DESTDIR)$(BINDIR)/mod_wasm-precompile

bench: all
	$(CARGO) bench -p mod_wasm_bench

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	rm -rf $(BUILD) mod_wasm_c/.libs mod_wasm_c/*.la mod_wasm_c/*.lo mod_wasm_c/*.slo mod_wasm_c/*.o
