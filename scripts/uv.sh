# Sourced by the scripts: puts the uv command in UV, installing uv with pip when it is missing.
if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "uv not found: installing it with pip (python3 -m pip install --user uv)" >&2
    python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  fi
  UV=(python3 -m uv)
fi
