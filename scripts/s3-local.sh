#!/usr/bin/env bash
# A local S3 API (moto server) on 127.0.0.1 for trying agentfs against S3 by hand.
#
#   bash scripts/s3-local.sh [PORT]      (default 5000; Ctrl-C stops it; state is in memory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"

PORT="${1:-5000}"
case "$PORT" in
    '' | *[!0-9]*) echo "usage: $0 [PORT]" >&2; exit 2 ;;
esac

bash scripts/setup.sh

cat <<MSG
Local S3 (moto) on http://127.0.0.1:$PORT — in another shell:

  export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
  export AWS_ACCESS_KEY_ID=testing
  export AWS_SECRET_ACCESS_KEY=testing
  export AWS_DEFAULT_REGION=us-east-1

It starts empty; create a bucket first, e.g.:
  .venv/bin/python -c "import boto3; boto3.client('s3').create_bucket(Bucket='agentfs')"

MSG

exec .venv/bin/moto_server -H 127.0.0.1 -p "$PORT"
