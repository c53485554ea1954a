#!/bin/bash
# warmstart drain: lets the streams a replica is serving finish before the ASG takes it away.
#
# Scale-in, `endpoint stop` and change-gpu's instance refresh all remove a serving replica through
# the group's EC2_INSTANCE_TERMINATING lifecycle hook: the instance waits in Terminating:Wait (or
# Warmed:Pending:Wait when it returns to the warm pool) until someone completes the action. The
# shutdown only comes after that, so a systemd ExecStop would run too late; this watcher polls the
# instance's target lifecycle state (IMDSv2) instead, and when it turns Terminated or Warmed:*:
#   1. tags warmstart:phase=draining (the gate already stops routing to a Terminating instance;
#      the tag is what `warmstart endpoint status` shows)
#   2. waits until vLLM has no request running or queued (its /metrics gauges), seen on two polls
#      in a row (a request the gate routed just before it noticed may still arrive), bounded by
#      DRAIN_TIMEOUT_S (the endpoint's request timeout)
#   3. stops the engine and completes the lifecycle action with CONTINUE (the launch hook's when
#      the instance returns to the warm pool, the termination hook's otherwise; see below)
# The hook's heartbeat outlasts DRAIN_TIMEOUT_S; if this script dies, the heartbeat's default
# result (CONTINUE) ends the wait anyway.
#
# Started by replica-boot.sh once it serves (warmstart-drain.service); reads the same boot.env.
set -euo pipefail

# shellcheck source=/dev/null
. "${WARMSTART_BOOT_ENV:-/etc/warmstart/boot.env}"
IMDS="${WARMSTART_IMDS:-http://169.254.169.254}"
SYSTEMCTL="${WARMSTART_SYSTEMCTL:-systemctl}"
DRAIN_POLL_S="${DRAIN_POLL_S:-5}"
DRAIN_TIMEOUT_S="${DRAIN_TIMEOUT_S:-600}"

log() { echo "drain: $*" >&2; }

# A fresh IMDSv2 token per read: this watcher outlives any token's TTL.
meta() {
  local token
  token="$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/latest/api/token")"
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}

while :; do
  state="$(meta autoscaling/target-lifecycle-state 2>/dev/null || true)"
  case "$state" in
    Terminated | Warmed:*) break ;;
  esac
  sleep "$DRAIN_POLL_S"
done
instance_id="$(meta instance-id)"
private_ip="$(meta local-ipv4)"
log "target lifecycle state $state: draining $instance_id"

aws ec2 create-tags --region "$REGION" --resources "$instance_id" \
  --tags "Key=warmstart:phase,Value=draining" || true

# Requests vLLM is running or has queued (summed over its engines); an engine that does not
# answer has nothing left to drain.
busy() {
  curl -fsS --max-time 5 "http://$private_ip:$ENGINE_PORT/metrics" \
    | awk '/^vllm:num_requests_(running|waiting)[{ ]/ { n += $NF } END { print n + 0 }'
}

deadline=$((SECONDS + DRAIN_TIMEOUT_S))
idle_polls=0
while :; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "still busy after ${DRAIN_TIMEOUT_S}s; letting the instance go"
    break
  fi
  n="$(busy)" || n=0
  if [ "$n" = 0 ]; then
    idle_polls=$((idle_polls + 1))
    [ "$idle_polls" -ge 2 ] && break
  else
    idle_polls=0
  fi
  sleep "$DRAIN_POLL_S"
done

"$SYSTEMCTL" stop warmstart-replica.service || true
# Which hook holds the instance: leaving for good, the termination hook (Terminating:Wait). Going
# back to the warm pool (reuse_on_scale_in), AWS pauses it in Warmed:Pending:Wait, the state the
# LAUNCH hook governs ("When you add a launch lifecycle hook, Amazon EC2 Auto Scaling pauses an
# instance that transitions to the Warmed:Pending:Wait state"): complete that one first, and the
# termination hook if no launch action is pending (the API refuses an action that is not).
case "$state" in
  Warmed:*) hooks=("$LAUNCH_HOOK_NAME" "$TERMINATE_HOOK_NAME") ;;
  *) hooks=("$TERMINATE_HOOK_NAME") ;;
esac
for _ in 1 2 3; do
  for hook in "${hooks[@]}"; do
    if aws autoscaling complete-lifecycle-action --region "$REGION" \
      --auto-scaling-group-name "$ASG_NAME" --lifecycle-hook-name "$hook" \
      --instance-id "$instance_id" --lifecycle-action-result CONTINUE; then
      log "lifecycle action of $hook completed"
      exit 0
    fi
  done
  sleep "$DRAIN_POLL_S"
done
exit 1
