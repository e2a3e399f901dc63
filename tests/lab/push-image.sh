#!/bin/sh
# push-image.sh HOST:PORT NAME TAG ROOTFS_TAR [curl options]
# Pushes a one-layer image built from a rootfs tarball to a registry with curl only (Registry
# HTTP API v2: blob uploads, then the manifest). No docker daemon, no public registry involved.
# CONFIG (env) is the image config's "config" object, e.g. to add a Healthcheck.
set -eu
REG=$1; NAME=$2; TAG=$3; TAR=$4; shift 4
URL=${URL:-http://$REG}; W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
gzip -n -c "$TAR" > "$W/layer.tgz"
DIFF_ID=sha256:$(sha256sum < "$TAR" | cut -d' ' -f1)
LAYER_DG=sha256:$(sha256sum < "$W/layer.tgz" | cut -d' ' -f1); LAYER_SZ=$(stat -c %s "$W/layer.tgz")
CONFIG=${CONFIG:-'{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}'}
printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]}}' "$CONFIG" "$DIFF_ID" > "$W/config.json"
CFG_DG=sha256:$(sha256sum < "$W/config.json" | cut -d' ' -f1); CFG_SZ=$(stat -c %s "$W/config.json")
upload() { F=$1; D=$2; shift 2
  if curl -fsS "$@" -o /dev/null -I "$URL/v2/$NAME/blobs/$D" 2>/dev/null; then return 0; fi
  LOC=$(curl -fsS "$@" -X POST -D - -o /dev/null "$URL/v2/$NAME/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case "$LOC" in http*) ;; *) LOC="$URL$LOC";; esac
  case "$LOC" in *\?*) SEP='&';; *) SEP='?';; esac
  curl -fsS "$@" -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$F" "$LOC${SEP}digest=$D" -o /dev/null; }
upload "$W/layer.tgz" "$LAYER_DG" "$@"
upload "$W/config.json" "$CFG_DG" "$@"
printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":%s,"digest":"%s"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":%s,"digest":"%s"}]}' "$CFG_SZ" "$CFG_DG" "$LAYER_SZ" "$LAYER_DG" > "$W/manifest.json"
curl -fsS "$@" -X PUT -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' --data-binary "@$W/manifest.json" "$URL/v2/$NAME/manifests/$TAG" -o /dev/null
