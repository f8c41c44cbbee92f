# Sourced by .ci/test: makes Debian's headless-capable Chromium available to the browser
# tests (tests/integration/common/browser.rs), installing the `chromium` package (and one
# font, so pages and screenshots have glyphs) when no `chromium` is on PATH. About 300 MB,
# once per machine. Exports TILEBOX_CHROMIUM, the binary the tests launch.
if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Chromium (Debian's chromium package)" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
TILEBOX_CHROMIUM="$(command -v chromium)"
export TILEBOX_CHROMIUM
echo "test Chromium: $("$TILEBOX_CHROMIUM" --version 2>/dev/null || echo "$TILEBOX_CHROMIUM")" >&2
