#!/usr/bin/env bash
# Start Orthanc with its DICOMweb plugin on 127.0.0.1, in the foreground, with its configuration and database in a
# folder of its own (no systemd, nothing under /etc or /var/lib is used or changed).
#
#   bash apps/monailabel/orthanc/start_orthanc.sh [WORK_DIR] [HTTP_PORT]
#
# WORK_DIR (default: a new temporary folder) receives orthanc.json and the database (db/); HTTP_PORT defaults to
# 8042. DICOMweb is then served at http://127.0.0.1:HTTP_PORT/dicom-web (the --studies URL of MONAI Label);
# the Orthanc REST API (POST /instances to store a DICOM file) at http://127.0.0.1:HTTP_PORT.
# Only loopback clients are accepted (RemoteAccessAllowed false); the DICOM (DIMSE) port is off. With ORTHANC_USER and
# ORTHANC_PASSWORD set, Orthanc asks every client for them (HTTP basic authentication), as a hospital's server does;
# MONAI Label then needs MONAI_LABEL_DICOMWEB_USERNAME and MONAI_LABEL_DICOMWEB_PASSWORD.
# Needs the Debian packages orthanc and orthanc-dicomweb (apt-get install -y orthanc orthanc-dicomweb).
set -euo pipefail
WORK="${1:-$(mktemp -d -t orthanc.XXXXXX)}"
PORT="${2:-8042}"
ORTHANC="${ORTHANC:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}"
if [ ! -x "$ORTHANC" ]; then
  echo "start_orthanc: Orthanc not found (install it: apt-get install -y orthanc orthanc-dicomweb)" >&2
  exit 2
fi
PLUGIN="${ORTHANC_DICOMWEB_PLUGIN:-$(ls /usr/lib/orthanc/libOrthancDicomWeb.so* 2>/dev/null | head -n 1)}"
if [ -z "$PLUGIN" ] || [ ! -f "$PLUGIN" ]; then
  echo "start_orthanc: the DICOMweb plugin is not installed (apt-get install -y orthanc-dicomweb)" >&2
  exit 2
fi
case "$PORT" in ''|*[!0-9]*) echo "start_orthanc: HTTP_PORT must be a number, got '$PORT'" >&2; exit 2;; esac
AUTH='"AuthenticationEnabled": false,'
if [ -n "${ORTHANC_USER:-}" ] || [ -n "${ORTHANC_PASSWORD:-}" ]; then
  case "${ORTHANC_USER:-}${ORTHANC_PASSWORD:-}" in
    *'"'*|*'\'*) echo "start_orthanc: ORTHANC_USER and ORTHANC_PASSWORD may not hold \" or \\" >&2; exit 2;;
  esac
  if [ -z "${ORTHANC_USER:-}" ] || [ -z "${ORTHANC_PASSWORD:-}" ]; then
    echo "start_orthanc: set both ORTHANC_USER and ORTHANC_PASSWORD (or neither)" >&2; exit 2
  fi
  AUTH="\"AuthenticationEnabled\": true, \"RegisteredUsers\": {\"$ORTHANC_USER\": \"$ORTHANC_PASSWORD\"},"
fi
mkdir -p "$WORK/db"
cat > "$WORK/orthanc.json.tmp" <<JSON
{
  "Name": "monai-probunet-orthanc",
  "StorageDirectory": "$WORK/db",
  "IndexDirectory": "$WORK/db",
  "HttpServerEnabled": true,
  "HttpPort": $PORT,
  "RemoteAccessAllowed": false,
  $AUTH
  "DicomServerEnabled": false,
  "Plugins": ["$PLUGIN"],
  "DicomWeb": {
    "Enable": true,
    "Root": "/dicom-web/",
    "EnableWado": true,
    "WadoRoot": "/wado",
    "Host": "127.0.0.1",
    "Ssl": false
  }
}
JSON
mv "$WORK/orthanc.json.tmp" "$WORK/orthanc.json"
echo "start_orthanc: $WORK/orthanc.json; DICOMweb at http://127.0.0.1:$PORT/dicom-web" >&2
exec "$ORTHANC" "$WORK/orthanc.json"
