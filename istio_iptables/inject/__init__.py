"""What Istio's sidecar injector (and the Istio CNI plugin) would do with a pod.

annotations (the Istio pod annotations we read, and the istio-iptables flags they set,
validated as the injector validates them: pure, no YAML, cheap enough for the CNI
plugin) → template (pod spec + Helm values + mesh config → the init container's name,
args and env, as Istio's injection template writes them) → manifest (YAML documents →
pod templates: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, List)
→ frompod (`--from-pod FILE`: one pod template → capture flags and env).

Istio's `manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`
and `pkg/kube/inject` are the specification; each rule below names the part it follows.
Nothing here is imported on the init path.
"""
