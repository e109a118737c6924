#!/bin/sh
# Refresh the user's editable copy of the tutorials (never overwriting their edits),
# then hand over to the single-user server with whatever arguments the spawner passed.
set -e
if [ -d "${GPUHUB_TUTORIALS_DIR:-/home/jovyan/tutorials}" ]; then
  python3 /opt/gpuhub/gpuhub_usercopy.py \
    "${GPUHUB_TUTORIALS_DIR:-/home/jovyan/tutorials}" \
    "${GPUHUB_TUTORIALS_COPY_DIR:-/home/jovyan/my-tutorials}" \
    || echo "gpuhub: could not refresh the editable tutorial copy; your files were left as they were" >&2
fi
exec jupyterhub-singleuser "$@"
