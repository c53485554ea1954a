#!/bin/bash
# warmstart warm-pool hook: prepares an instance that is entering the warm pool (target lifecycle
# state Warmed:Stopped) so that starting it later pays no lazy snapshot loading, then completes
# the launch lifecycle action so the ASG stops it into the pool.
#
#   1. pre-read every block of the weights volume (restored lazily from its snapshot: the first
#      read of each block would otherwise come from S3 while a user waits) with fio, or with
#      parallel dd where fio is not installed
#   2. warm vLLM's caches: start the engine once (WARM_ENGINE=1, default) so torch.compile and
#      CUDA-graph caches are written to the weights volume's cache/ directory, wait for /health,
#      stop it (EBS keeps those files across the stop); a heartbeat before it restarts the
#      launch hook's clock, so its timeout bounds each phase, not their sum
#   3. complete-lifecycle-action CONTINUE (IMDSv2 for the instance id); on any failure ABANDON,
#      so the ASG replaces the instance instead of pooling a cold one
#
# Run by replica-boot.sh (exec) at boot when the target lifecycle state is Warmed:Stopped; reads
# the same /etc/warmstart/boot.env (REGION, ASG_NAME, LAUNCH_HOOK_NAME, ENGINE_PORT, ...).
set -Eeuo pipefail

# shellcheck source=/dev/null
. "${WARMSTART_BOOT_ENV:-/etc/warmstart/boot.env}"
IMDS="${WARMSTART_IMDS:-http://169.254.169.254}"
SYSTEMCTL="${WARMSTART_SYSTEMCTL:-systemctl}"
WEIGHTS_MOUNT="${WEIGHTS_MOUNT:-/opt/warmstart/weights}"
RUN_DIR="${RUN_DIR:-/run/warmstart}"
PREREAD_JOBS="${PREREAD_JOBS:-8}"
WARM_ENGINE="${WARM_ENGINE:-1}"
READY_WAIT_TRIES="${READY_WAIT_TRIES:-360}"

log() { echo "warm-pool-hook: $*" >&2; }

token="$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" "$IMDS/latest/api/token")"
meta() {
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}
instance_id="$(meta instance-id)"

complete() {
  log "complete-lifecycle-action $1 ($ASG_NAME / $LAUNCH_HOOK_NAME / $instance_id)"
  aws autoscaling complete-lifecycle-action --region "$REGION" \
    --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$LAUNCH_HOOK_NAME" \
    --instance-id "$instance_id" --lifecycle-action-result "$1"
}

# A phase boundary restarts the hook's heartbeat clock (see replica-boot.sh).
heartbeat() {
  aws autoscaling record-lifecycle-action-heartbeat --region "$REGION" \
    --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$LAUNCH_HOOK_NAME" \
    --instance-id "$instance_id" || true
}

abandon() {
  local line="$1"
  trap - ERR
  log "failed at line $line; abandoning this instance (the ASG launches a replacement)"
  "$SYSTEMCTL" stop warmstart-replica.service >/dev/null 2>&1 || true
  complete ABANDON || true
  exit 1
}
trap 'abandon $LINENO' ERR

weights_device() {
  if [ -n "${WEIGHTS_DEVICE:-}" ]; then
    echo "$WEIGHTS_DEVICE"
    return 0
  fi
  findmnt -n -o SOURCE --mountpoint "$WEIGHTS_MOUNT"
}

device_size() {
  if [ -b "$1" ]; then
    blockdev --getsize64 "$1"
  else
    stat -c %s "$1"
  fi
}

preread() {
  local dev="$1" size mib jobs chunk i status=0
  size="$(device_size "$dev")"
  if command -v fio >/dev/null 2>&1 && [ -b "$dev" ]; then
    log "pre-reading $dev ($size bytes) with fio"
    fio --name=warmstart-preread --filename="$dev" --rw=read --bs=1M --iodepth=32 \
      --ioengine=libaio --direct=1 --numjobs=1 --output=/dev/null
  else
    mib=$(( (size + 1048575) / 1048576 ))
    jobs="$PREREAD_JOBS"
    chunk=$(( (mib + jobs - 1) / jobs ))
    log "pre-reading $dev ($size bytes) with $jobs parallel dd readers"
    local flags=()
    if [ -b "$dev" ]; then
      flags=(iflag=direct)
    fi
    local pids=()
    for (( i = 0; i < jobs; i++ )); do
      dd if="$dev" of=/dev/null bs=1M skip=$(( i * chunk )) count="$chunk" "${flags[@]}" status=none &
      pids+=("$!")
    done
    for pid in "${pids[@]}"; do
      wait "$pid" || status=$?
    done
    [ "$status" -eq 0 ]
  fi
  log "pre-read $size bytes"
}

warm_engine() {
  local private_ip
  private_ip="$(meta local-ipv4)"
  mkdir -p "$RUN_DIR"
  sed -e "s/@PRIVATE_IPV4@/$private_ip/g" -e "s/@INSTANCE_ID@/$instance_id/g" \
    "$ENGINE_TEMPLATE" > "$RUN_DIR/engine.sh.tmp"
  mv "$RUN_DIR/engine.sh.tmp" "$RUN_DIR/engine.sh"
  log "starting the engine once to fill its compile caches"
  "$SYSTEMCTL" start warmstart-replica.service
  local i
  for (( i = 0; i < READY_WAIT_TRIES; i++ )); do
    if curl -fsS -o /dev/null "http://$private_ip:$ENGINE_PORT/health"; then
      log "engine answered /health; stopping it"
      "$SYSTEMCTL" stop warmstart-replica.service
      return 0
    fi
    sleep 5
  done
  log "engine never answered /health"
  return 1
}

dev="$(weights_device)"
if [ -z "$dev" ] || [ ! -e "$dev" ]; then
  log "weights volume not found (mount $WEIGHTS_MOUNT, device '${dev:-none}')"
  abandon "$LINENO"
fi
preread "$dev"
if [ "$WARM_ENGINE" = "1" ]; then
  heartbeat
  warm_engine
fi
complete CONTINUE
