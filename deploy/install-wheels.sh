#!/bin/sh
# Installs Python packages into the image's venv with uv (parallel, several times faster than pip), from where the
# build's pip would find them: PIP_FIND_LINKS, PIP_EXTRA_INDEX_URL (a host's local wheels, mounted by image.sh),
# PIP_CERT (a TLS-inspecting proxy's bundle), else PyPI. Arguments: what `uv pip install` takes.
set -eu
[ -n "${PIP_CERT:-}" ] && export SSL_CERT_FILE="$PIP_CERT"
[ -n "${PIP_FIND_LINKS:-}" ] && export UV_FIND_LINKS="$(echo "$PIP_FIND_LINKS" | tr ' ' ',')"
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] && export UV_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL"
exec uv pip install --quiet --index-strategy unsafe-best-match "$@"
