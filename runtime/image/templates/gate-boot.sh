#!/bin/bash
# warmstart gate boot: fetch the gate's config from SSM Parameter Store (rendered by the stack),
# pull the gate image, enable and start the gate. With --refresh (the timer, every minute): a
# changed config (endpoint stopped/started, new replica bounds) is swapped in atomically and the
# gate RELOADED (gunicorn HUP: new workers read it, old workers finish their requests), so a config
# change never restarts a gate and never drops capacity; an unchanged one is left alone.
set -euo pipefail

# shellcheck source=/dev/null
. "${WARMSTART_BOOT_ENV:-/etc/warmstart/boot.env}"
SYSTEMCTL="${WARMSTART_SYSTEMCTL:-systemctl}"
mode="${1:-boot}"

# The gate runs as the image's uid with GATE_GID as its group (docker run --user): the config
# holds the cache's AUTH token, so it is root's, readable by that group only.
install -d -m 0750 -g "$GATE_GID" "$GATE_CONFIG_DIR"
tmp="$(mktemp "$GATE_CONFIG_DIR/.gate.json.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
aws ssm get-parameter --region "$REGION" --with-decryption --name "$GATE_CONFIG_PARAMETER" \
  --query Parameter.Value --output text > "$tmp"
chown "0:$GATE_GID" "$tmp"
chmod 0640 "$tmp"

if [ "$mode" = "--refresh" ] && cmp -s "$tmp" "$GATE_CONFIG"; then
  exit 0
fi
mv -f "$tmp" "$GATE_CONFIG"
trap - EXIT

if [ "$mode" = "--refresh" ]; then
  # Starts the gate if it is not running (a failed start, a reboot before the image was cached).
  "$SYSTEMCTL" reload-or-restart warmstart-gate.service
  exit 0
fi

if [[ "$IMAGE_URI" == *.dkr.ecr.*.amazonaws.com/* ]]; then
  aws ecr get-login-password --region "$REGION" \
    | docker login --username AWS --password-stdin "${IMAGE_URI%%/*}"
fi
docker pull --quiet "$IMAGE_URI"
# Enabled, so a reboot starts the gate again (with the config on disk; the timer refreshes it).
"$SYSTEMCTL" enable warmstart-gate.service
"$SYSTEMCTL" restart warmstart-gate.service
