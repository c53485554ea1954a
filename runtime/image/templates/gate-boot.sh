#!/bin/bash
# warmstart gate boot: fetch the gate's config from SSM Parameter Store (rendered by the stack),
# then start the gate. Also run by a timer: a changed config (endpoint stopped/started, new
# replica bounds) is swapped in atomically and the gate restarted; an unchanged one is left alone.
set -euo pipefail

# shellcheck source=/dev/null
. "${WARMSTART_BOOT_ENV:-/etc/warmstart/boot.env}"
SYSTEMCTL="${WARMSTART_SYSTEMCTL:-systemctl}"

mkdir -p "$(dirname "$GATE_CONFIG")"
tmp="$(mktemp "$GATE_CONFIG.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
aws ssm get-parameter --region "$REGION" --with-decryption --name "$GATE_CONFIG_PARAMETER" \
  --query Parameter.Value --output text > "$tmp"
chmod 0640 "$tmp"

if [ "${1:-}" = "--refresh" ] && cmp -s "$tmp" "$GATE_CONFIG"; then
  exit 0
fi
mv "$tmp" "$GATE_CONFIG"
trap - EXIT

if [[ "$IMAGE_URI" == *.dkr.ecr.*.amazonaws.com/* ]]; then
  aws ecr get-login-password --region "$REGION" \
    | docker login --username AWS --password-stdin "${IMAGE_URI%%/*}"
fi
docker pull --quiet "$IMAGE_URI"
"$SYSTEMCTL" restart warmstart-gate.service
