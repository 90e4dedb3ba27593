#!/usr/bin/env bash
# Express Gateway's getting-started steps, as its users script them against its admin API
# (curl and jq, nothing of this gateway's own): a user, an app, a key-auth credential; a call
# with the key; the credential deactivated; the same call refused.
#
#   ADMIN=http://127.0.0.1:9876 GATEWAY=http://127.0.0.1:8080 API_PATH=/ip examples/admin-api/eg-quickstart.sh
set -euo pipefail
ADMIN=${ADMIN:-http://localhost:9876}
GATEWAY=${GATEWAY:-http://localhost:8080}
API_PATH=${API_PATH:-/ip}
USERNAME=${USERNAME:-bob}

user=$(curl -sf -X POST "$ADMIN/users" -H 'Content-Type: application/json' \
  -d "{\"username\": \"$USERNAME\", \"firstname\": \"Bob\", \"lastname\": \"Smith\", \"email\": \"bob@example.com\"}")
user_id=$(jq -r .id <<<"$user")
echo "user $USERNAME: $user_id"

app=$(curl -sf -X POST "$ADMIN/apps" -H 'Content-Type: application/json' \
  -d "{\"name\": \"$USERNAME-app\", \"userId\": \"$user_id\", \"redirectUri\": \"https://example.com/cb\"}")
echo "app: $(jq -r .id <<<"$app") of $(jq -r .userId <<<"$app")"

credential=$(curl -sf -X POST "$ADMIN/credentials" -H 'Content-Type: application/json' \
  -d "{\"consumerId\": \"$USERNAME\", \"type\": \"key-auth\"}")
key_id=$(jq -r .keyId <<<"$credential")
key_secret=$(jq -r .keySecret <<<"$credential")
echo "key-auth credential: $key_id"

status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: apiKey $key_id:$key_secret" "$GATEWAY$API_PATH")
echo "call with the key: $status"
[ "$status" = 200 ]

curl -sf -X PUT "$ADMIN/credentials/key-auth/$key_id/status" -H 'Content-Type: application/json' \
  -d '{"status": false}' | jq -r .status

status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: apiKey $key_id:$key_secret" "$GATEWAY$API_PATH")
echo "call with the deactivated key: $status"
[ "$status" = 401 ]
