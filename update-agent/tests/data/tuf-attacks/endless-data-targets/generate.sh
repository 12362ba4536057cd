#!/bin/sh
set -eu
f="$REPO/tuf/stable/metadata/3.targets.json"
head -c 20971520 /dev/zero | tr '\0' ' ' >> "$f"
