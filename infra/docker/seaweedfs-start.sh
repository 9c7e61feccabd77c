#!/bin/sh
# Start SeaweedFS (master + volume + filer + S3 gateway in one process) with one S3 identity whose
# keys come from the environment, so no credential is written into the repository or the image.
set -eu
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set}"
umask 077
mkdir -p /tmp/opdlm
cat >/tmp/opdlm/s3.json <<JSON
{"identities": [{"name": "opdlm", "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
exec weed server -dir=/data -ip.bind=0.0.0.0 -volume.max=0 -master.volumeSizeLimitMB=1024 \
  -s3 -s3.port=8333 -s3.config=/tmp/opdlm/s3.json
