# The guest toolchain that scripts/build-components, build-wsgi and build-js
# share, sourced by each (they set $root and $tools first): one pinned
# componentize-py, one componentize-js, and the WIT of the server's own
# wasmtime-wasi-http.

# componentize-py: Python apps as pre-initialized components.
COMPONENTIZE_PY_VERSION="0.25.1"
COMPONENTIZE_PY_SHA256="8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f"

# The directory of a crate of the workspace's lock file.
crate_dir() {
    cargo metadata --format-version 1 --locked --manifest-path "$root/Cargo.toml" |
        python3 -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
p = next(p for p in pkgs if p["name"] == sys.argv[1])
print(os.path.dirname(p["manifest_path"]))' "$1"
}

wit_dir() {
    echo "$(crate_dir wasmtime-wasi-http)/wit"
}

wit_p3_dir() {
    echo "$(crate_dir wasmtime-wasi-http)/src/p3/wit"
}

componentize_py() {
    local venv="$tools/componentize-py-$COMPONENTIZE_PY_VERSION"
    if [[ ! -x "$venv/bin/componentize-py" ]]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        printf 'componentize-py==%s --hash=sha256:%s\n' \
            "$COMPONENTIZE_PY_VERSION" "$COMPONENTIZE_PY_SHA256" > "$venv/requirements.txt"
        "$venv/bin/pip" install --quiet --no-deps --only-binary :all: \
            --require-hashes -r "$venv/requirements.txt"
    fi
    echo "$venv/bin/componentize-py"
}

# componentize-js, installed from the lock file (npm checks every
# package's integrity hash) into build/tools/, once per lock file.
componentize_js() {
    local lock="$root/guests/http/js/package-lock.json" dir
    dir="$tools/js-$(sha256sum "$lock" | cut -c1-12)"
    if [[ ! -x "$dir/node_modules/.bin/componentize-js" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        cp "$root/guests/http/js/package.json" "$lock" "$dir/"
        echo "npm ci: componentize-js (once per checkout)" >&2
        (cd "$dir" && npm ci --quiet --no-audit --no-fund >&2)
    fi
    echo "$dir/node_modules/.bin/componentize-js"
}

# componentize-js 0.23.0's engine exports wasi:http/incoming-handler@0.2.10:
# its world must say 0.2.10. The server's WIT (0.2.12) with that version:
# 0.2.12 only adds to 0.2.10, and the server links any 0.2 guest.
wit_0_2_10() {
    local dir="$root/build/components/wit-0.2.10"
    if [[ ! -f "$dir/world.wit" ]]; then
        rm -rf "$dir.tmp"
        cp -r "$(wit_dir)" "$dir.tmp"
        sed -i 's/@0\.2\.12\b/@0.2.10/g; s/version = 0\.2\.12\b/version = 0.2.10/g' \
            "$dir.tmp"/*.wit "$dir.tmp"/deps/*.wit
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}
