#!/usr/bin/env bash
# CI for the VS Code extension, from a clean clone: install exactly the locked packages, lint
# (tsc --noEmit strict, then eslint), run the unit tests with Node's test runner, build the .vsix.
# The tests against the real `assistant lsp` run when the repository's .venv (or ASSISTANT_BIN)
# has the assistant installed, and are skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
npm ci --no-audit --no-fund
npm run lint
npm test
npm run package
echo "ci.sh: assistant.vsix built in $((SECONDS - start)) s"
