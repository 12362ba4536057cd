#!/bin/sh
# Published with a timestamp that expires at once; a second later it has.
set -eu
sleep 1.1
