#!/bin/sh
set -eu
f="$REPO/tuf/stable/metadata/3.snapshot.json"
sed -i 's/"version": 3/"version": 9/' "$f"
