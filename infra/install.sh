#!/usr/bin/env bash
# Install litflow and everything it needs into a project-local virtualenv (.venv).
# Idempotent: the Makefile only calls it again when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "litflow needs Python 3.11 or 3.12 (img2dataset imports imghdr, gone in 3.13); set PYTHON=..." >&2
  return 1
}

# System tools: Java for Spark, npm / apt-get / dpkg-deb for fetching the demo data, chromium for the dedup report test.
need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# headless browser for the de-duplication report's page test (tests/test_dedup_report.py)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing system packages: ${need_apt[*]} (install them, e.g. with apt-get)" >&2; exit 1
  fi
fi

PY=$(pick_python)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch first and pinned, so that nothing later pulls a multi-GB CUDA build. Where the CPU wheel
# is not on local disk, point TORCH_INDEX_URL at PyTorch's CPU index.
"${PIP[@]}" install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"${PIP[@]}" install -e '.[test]'
# img2dataset pulls the `dataclasses` backport, which breaks Prefect's server on Python 3.11
"${PIP[@]}" uninstall -y dataclasses >/dev/null 2>&1 || true
NO_ALBUMENTATIONS_UPDATE=1 "$VENV/bin/python" -c '
import apache_beam, img2dataset, pyspark, torch, webdataset, langdetect, imagehash, prefect
print("litflow environment ready: torch", torch.__version__, "| beam", apache_beam.__version__, "| prefect", prefect.__version__)'
