#!/usr/bin/env bash
# `make demo`: local control plane with fake GPU nodes, the CRDs, the operator and the simulated fleet,
# then examples/ applied and watched until every service is Ready. `hack/demo.sh down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run/demo
PY=.venv/bin/python
mkdir -p "$RUN"

stop() {
  for p in operator fleet; do
    [[ -f "$RUN/$p.pid" ]] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true
    rm -f "$RUN/$p.pid"
  done
  python3 hack/cluster.py down --dir "$RUN/cluster"
}
if [[ "${1:-}" == "down" ]]; then stop; exit 0; fi

KUBECONFIG=$(python3 hack/cluster.py up --dir "$RUN/cluster" --nodes 8 | tail -1)
export KUBECONFIG
KUBECTL="$(python3 hack/cluster.py binaries)/kubectl"
k() { "$KUBECTL" "$@"; }

k apply -f crds/manifests/ >/dev/null
k wait --for condition=established crd --all --timeout=60s >/dev/null
k apply -f crds/peering/ -f examples/priorityclasses.yaml >/dev/null
for p in operator fleet; do [[ -f "$RUN/$p.pid" ]] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true; done
$PY operator/main.py --kubeconfig "$KUBECONFIG" --metrics-port 18080 --health-port 18081 --log-format plain \
  --autoscale-interval-seconds 3 --metrics-url-template "{engineURL}/metrics" --forecast-error-window 30 \
  >"$RUN/operator.log" 2>&1 & echo $! >"$RUN/operator.pid"
$PY -m simulator.fleet --kubeconfig "$KUBECONFIG" --state-dir "$RUN/fleet" --cold-start-scale 20 \
  >"$RUN/fleet.log" 2>&1 & echo $! >"$RUN/fleet.pid"

echo "== applying examples/ (dense, MoE, prefill/decode services; a fine-tune job; a power budget)"
k apply -f examples/
for i in $(seq 1 60); do
  sleep 3
  clear 2>/dev/null || true
  echo "== kubectl get llms,ftj,pb,pods -o wide   (t=$((i * 3))s)"
  k get llms,ftj,pb -o wide
  echo
  k get pods -o wide
  ready=$(k get llms -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Ready$' || true)
  total=$(k get llms --no-headers | wc -l)
  ftj=$(k get ftj support-bot-lora -o jsonpath='{.status.phase}')
  if [[ "$ready" == "$total" && ( "$ftj" == "Running" || "$ftj" == "Succeeded" ) ]]; then
    echo; echo "== converged: $ready/$total services Ready, fine-tune job $ftj"
    break
  fi
done
echo
echo "== part 2: a forecast-autoscaled service under a replayed Azure LLM trace slice"
$PY hack/demo_autoscale.py --kubeconfig "$KUBECONFIG" --kubectl "$KUBECTL" --seconds "${DEMO_REPLAY_SECONDS:-90}"

echo
echo "== part 3: a high-priority service arrives on a full cluster; a fine-tune job checkpoints on SIGTERM, yields,"
echo "   resumes from its checkpoint, succeeds, and its adapter is published to llms/llama3-8b and served by name"
k delete llms chat --ignore-not-found --wait=false >/dev/null
k apply -f examples/preemption/low-priority-finetune.yaml
show() {
  k get ftj big-lora -o custom-columns='JOB:.metadata.name,PHASE:.status.phase,STEP:.status.step,CHECKPOINT:.status.lastCheckpoint.step,SIGTERM-AT:.status.checkpointRequest.step,RESUMED-FROM:.status.resumedFromStep,ATTEMPT:.status.attempt,PREEMPTIONS:.status.preemptions' --no-headers
  k get llms prod-chat --no-headers 2>/dev/null || true
}
until [[ "$(k get ftj big-lora -o jsonpath='{.status.phase}')" == "Running" ]]; do sleep 2; done
sleep 3; show
echo "-- applying the high-priority service (needs one of the L4 GPUs the job holds)"
k apply -f examples/preemption/high-priority-service.yaml
for i in $(seq 1 40); do
  sleep 2; show
  [[ "$(k get llms prod-chat -o jsonpath='{.status.readyReplicas}')" == "1" ]] && break
done
k get events --field-selector involvedObject.name=big-lora -o custom-columns='REASON:.reason,MESSAGE:.message' --no-headers | tail -5
echo "-- the service leaves; capacity returns and the job resumes from its SIGTERM checkpoint"
k delete llms prod-chat >/dev/null
for i in $(seq 1 60); do
  sleep 2; show
  [[ "$(k get ftj big-lora -o jsonpath='{.status.phase}')" == "Succeeded" ]] && break
done
k get events --field-selector involvedObject.name=big-lora -o custom-columns='REASON:.reason,MESSAGE:.message' --no-headers | tail -4
echo "-- the adapter is published: every ready replica of llms/llama3-8b loads it (POST /v1/load_lora_adapter)"
for i in $(seq 1 30); do
  loaded=$(k get llms llama3-8b -o jsonpath='{.status.adapters[?(@.name=="tickets-lora")].loadedReplicas}')
  [[ -n "$loaded" && "$loaded" -ge 1 ]] && break
  sleep 2
done
k get llms llama3-8b -o jsonpath='{range .status.adapters[*]}{.name}{"  from FineTuneJob "}{.fromJob}{", loaded on "}{.loadedReplicas}{" replica(s)"}{"\n"}{end}'
url=$(k get pods -l ebbtide.dev/service=llama3-8b -o jsonpath='{.items[0].metadata.annotations.ebbtide\.dev/engine-url}')
request='{"model": "tickets-lora", "prompt": "My order has not arrived", "max_tokens": 12}'
echo "POST $url/v1/completions $request"
curl -s "$url/v1/completions" -H 'content-type: application/json' -d "$request"; echo

echo
echo "Try: KUBECONFIG=$KUBECONFIG $KUBECTL scale llms/llama3-8b --replicas=3"
echo "     KUBECONFIG=$KUBECONFIG $KUBECTL explain llms.spec.scaling"
echo "Stop everything with: make demo-down"
