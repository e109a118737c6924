#!/bin/sh
# Link ~/tutorials to the shared tutorials, refresh the user's editable copy (never
# overwriting their edits), then hand over to the single-user server.
#
# The tutorials mount is either a plain directory or a store published by the tutorial-sync
# service (versions/<commit>/ and a `current` link switched atomically); ~/tutorials follows
# `current`, so a running server sees each new commit as soon as it is published.
set -e
store="${GPUHUB_TUTORIALS_STORE:-/opt/gpuhub/tutorials}"
link="$HOME/tutorials"
if [ -e "$store/current" ] || [ -L "$store/current" ]; then target="$store/current"; else target="$store"; fi
if [ -L "$link" ] || [ ! -e "$link" ]; then
  ln -sfn "$target" "$link"
fi
copy="${GPUHUB_TUTORIALS_COPY_DIR:-$HOME/my-tutorials}"
if [ -d "$target" ] && [ -d "$copy" ]; then
  # pin one version: the copy must come from a single commit even if one is published meanwhile
  pinned=$(readlink -f "$target")
  python3 /opt/gpuhub/gpuhub_usercopy.py "$pinned" "$copy" \
    || echo "gpuhub: could not refresh the editable tutorial copy; your files were left as they were" >&2
fi
exec jupyterhub-singleuser "$@"
