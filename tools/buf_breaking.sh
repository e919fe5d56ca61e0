#!/usr/bin/env bash
# buf breaking against the previous commit. The very first commit (or one before
# protos existed) has nothing to break, so it is skipped rather than failed.
set -euo pipefail
buf=$1
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch --quiet --deepen=1
fi
prev=$(git rev-parse --verify --quiet 'HEAD~1^{commit}') || { echo "buf breaking: no previous commit, skipped"; exit 0; }
if git ls-tree -r --name-only "$prev" -- protos | grep -q '\.proto$'; then
  "$buf" breaking --against ".git#ref=$prev"
else
  echo "buf breaking: $prev has no protos, skipped"
fi
