#!/usr/bin/env bash
# Make the repo importable as `amk` without installing (the GPU machine has no package index):
# a site folder whose amk/ holds the repo's amk files plus links to the folders that map to subpackages.
set -e
repo=$(cd "$(dirname "$0")/.." && pwd)
site=${1:-/tmp/amk_site}
rm -rf "$site"; mkdir -p "$site/amk"
for f in "$repo"/amk/*; do ln -s "$f" "$site/amk/$(basename "$f")"; done
for sub in schedule vm eval flywheel schemas; do ln -s "$repo/$sub" "$site/amk/$sub"; done
echo "$site"
