#!/bin/sh
# The mirror ($WORK/mirror, served instead of the repository) holds the
# channel's metadata as drover channel init left it ($INIT_METADATA).
set -eu
mkdir -p "$WORK/mirror/tuf/stable"
cp -a "$INIT_METADATA" "$WORK/mirror/tuf/stable/metadata"
