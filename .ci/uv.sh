# Sourced by .ci/test and examples/quickstart.sh: makes `uv` runnable from any directory,
# installing it from PyPI into the pinned Python when it lacks it.
#
# The repository pins CPython 3.13 in .python-version (pyenv picks it up), so this must be
# sourced from the repository's root. uv goes into that Python, and its scripts directory
# goes first on PATH: a pyenv shim resolves `uv` only inside this repository (by
# .python-version), and the tests and projects run uv from other directories.
python="${PYTHON:-python3}"
if ! "$python" -m uv --version >/dev/null 2>&1; then
    echo "installing uv from PyPI into $("$python" -c 'import sys; print(sys.executable)')" >&2
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore uv
fi
scripts="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$scripts:$PATH"
(cd / && uv --version >/dev/null)
