#!/bin/sh
# The payload target replaced by another slot image of the same version and
# size, signed by the image key ($OTHER): what a mirror could serve.
set -eu
for f in "$REPO"/tuf/stable/targets/releases/1.1.0/*.usr.img; do
    rm "$f"
    cp "$OTHER" "$f"
done
