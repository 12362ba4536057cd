#!/bin/sh
# The attacker holds root-1.pem only: ../forge_root.py makes root 2 with
# the attacker's targets key and signs its canonical form with that key.
set -eu
here=$(dirname "$0")
"$PYTHON" "$here/../forge_root.py" \
    "$REPO/tuf/stable/metadata/1.root.json" "$KEYS/root-1.pem" \
    > "$REPO/tuf/stable/metadata/2.root.json"
