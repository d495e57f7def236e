"""KubeRay manifests rendered from the app config (`prefillshare render-k8s`).

Pure: pydantic + dicts + YAML, no Ray or Kubernetes client. The Serve config inside the
RayService (serveConfigV2) is config.yaml's own application with the node-pool placement
added, validated again by contract.config.AppConfig, so the two never drift.

  cluster.py     the cluster-side knobs (images, node pools, GPUs, shm, autoscaling)
  placement.py   which worker group hosts which engine deployment; serveConfigV2
  pods.py        pod templates: containers, env (NIXL/UCX, pod IP), volumes, probes
  manifests.py   RayService, RayJob, the models PVC, the training ConfigMap
  render.py      the command: `python -m deployments.k8s.render --help`
"""
