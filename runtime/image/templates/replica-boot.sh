#!/bin/bash
# warmstart replica boot: runs at EVERY boot (systemd oneshot), not only the first, because a
# warm-pool instance is launched once (into Warmed:Stopped), stopped, and later started again to
# go InService. The instance's target lifecycle state decides what this boot is for:
#   Warmed:Stopped  prepare only: pull the image, then hand over to warm-pool-hook.sh (pre-reads
#                   the weights volume and completes the launch lifecycle action)
#   anything else   serve: render the engine command with this boot's private address, start
#                   vLLM, and complete the launch lifecycle action once /health answers, so that
#                   InService means "serving" (ABANDON if it never does: the ASG replaces it).
set -euo pipefail

# shellcheck source=/dev/null
. "${WARMSTART_BOOT_ENV:-/etc/warmstart/boot.env}"
IMDS="${WARMSTART_IMDS:-http://169.254.169.254}"
SYSTEMCTL="${WARMSTART_SYSTEMCTL:-systemctl}"

token="$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" "$IMDS/latest/api/token")"
meta() {
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}

# The lifecycle state appears a few seconds after boot; an instance outside an ASG never gets one.
state=""
for _ in $(seq 1 "${STATE_WAIT_TRIES:-60}"); do
  state="$(meta autoscaling/target-lifecycle-state 2>/dev/null || true)"
  [ -n "$state" ] && break
  sleep 2
done
instance_id="$(meta instance-id)"
private_ip="$(meta local-ipv4)"

# A serving boot: from now on, leaving the group (scale-in, stop, refresh, or an abandoned boot)
# goes through drain.sh, which lets running requests finish and completes the termination hook.
# Started before anything here can fail, so a failed boot is not kept for the hook's heartbeat.
if [ "$state" != "Warmed:Stopped" ]; then
  "$SYSTEMCTL" start warmstart-drain.service
fi

if [[ "$IMAGE_URI" == *.dkr.ecr.*.amazonaws.com/* ]]; then
  aws ecr get-login-password --region "$REGION" \
    | docker login --username AWS --password-stdin "${IMAGE_URI%%/*}"
fi
# Each phase of a launch (image pull, pre-read, engine warm-up) may take most of the launch hook's
# heartbeat timeout; a heartbeat at each phase boundary restarts its clock, so the timeout bounds
# one phase (a stall), not the sum. Outside an ASG there is no hook to beat for.
heartbeat() {
  [ -n "$state" ] || return 0
  aws autoscaling record-lifecycle-action-heartbeat --region "$REGION" \
    --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$LAUNCH_HOOK_NAME" \
    --instance-id "$instance_id" || true
}
docker pull --quiet "$IMAGE_URI"
heartbeat

# vLLM (serving, or warming a warm-pool instance's caches) runs as the image's unprivileged user
# (docker run --user RUNTIME_UID:RUNTIME_UID) and writes its compile cache to cache/; the volume
# was filled by root. Hand cache/ (only: model/
# stays root's) to that uid, walking it again only when something in it is not already theirs;
# and let it read model/ even where the build ran under a strict umask.
install -d -m 0755 "$WEIGHTS_MOUNT/cache"
if [ -n "$(find "$WEIGHTS_MOUNT/cache" ! -uid "$RUNTIME_UID" -print -quit)" ]; then
  chown -R "$RUNTIME_UID:$RUNTIME_UID" "$WEIGHTS_MOUNT/cache"
fi
chmod a+rx "$WEIGHTS_MOUNT"
if [ -d "$WEIGHTS_MOUNT/model" ] && [ -n "$(find "$WEIGHTS_MOUNT/model" \( -type d ! -perm -o=rx \) -o \( ! -type d ! -perm -o=r \) -print -quit)" ]; then
  chmod -R a+rX "$WEIGHTS_MOUNT/model"
fi
if [ "$state" = "Warmed:Stopped" ]; then
  exec "$BIN_DIR/warm-pool-hook.sh"
fi

# The phase tag is for humans (`warmstart endpoint status`); InService already means serving.
phase() {
  aws ec2 create-tags --region "$REGION" --resources "$instance_id" \
    --tags "Key=warmstart:phase,Value=$1" || true
}
phase loading-weights

mkdir -p "$RUN_DIR"
sed -e "s/@PRIVATE_IPV4@/$private_ip/g" -e "s/@INSTANCE_ID@/$instance_id/g" \
  "$ENGINE_TEMPLATE" > "$RUN_DIR/engine.sh.tmp"
mv "$RUN_DIR/engine.sh.tmp" "$RUN_DIR/engine.sh"
"$SYSTEMCTL" start warmstart-replica.service
phase warming
heartbeat

complete() {
  [ -n "$state" ] || return 0
  aws autoscaling complete-lifecycle-action --region "$REGION" \
    --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$LAUNCH_HOOK_NAME" \
    --instance-id "$instance_id" --lifecycle-action-result "$1" || true
}
for _ in $(seq 1 "$READY_WAIT_TRIES"); do
  if curl -fsS -o /dev/null "http://$private_ip:$ENGINE_PORT/health"; then
    phase ready
    complete CONTINUE
    exit 0
  fi
  sleep 5
done
complete ABANDON
exit 1
