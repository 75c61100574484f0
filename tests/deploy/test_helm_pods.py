"""What a schema cannot see in the rendered chart: install order, Pod Security, GPU pods, labels.

Every check runs over each `helm/tiergate/ci/*.yaml` (defaults, dev, hosted only,
production, a GPU cluster with ingress and tolerations).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from engines.profiles import build
from tests.deploy.test_helm_compose import CHART, VALUES, render

GPU = CHART / "ci" / "gpu-cluster-values.yaml"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A loader that refuses a mapping with the same key twice (YAML allows the last to win)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise AssertionError(f"duplicate keys {sorted(dup)} at {node.start_mark}")
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,  # type: ignore[arg-type]
)


def rendered(helm: str, values: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm, "template", "t", str(CHART), "-f", str(values)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.load_all(out.stdout, Loader=_UniqueKeyLoader) if d]


def pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in POD_KINDS
    ]


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def referenced(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """Secrets and ConfigMaps a pod needs before its containers start."""
    refs: set[tuple[str, str]] = set()
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for e in c.get("env", []):
            src = e.get("valueFrom", {})
            if "secretKeyRef" in src and not src["secretKeyRef"].get("optional"):
                refs.add(("Secret", src["secretKeyRef"]["name"]))
            if "configMapKeyRef" in src and not src["configMapKeyRef"].get("optional"):
                refs.add(("ConfigMap", src["configMapKeyRef"]["name"]))
    for v in spec.get("volumes", []):
        if "secret" in v:
            refs.add(("Secret", v["secret"]["secretName"]))
        if "configMap" in v:
            refs.add(("ConfigMap", v["configMap"]["name"]))
    return refs


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_no_hook_waits_on_what_the_release_creates(helm: str, values: Path) -> None:
    docs = rendered(helm, values)
    ordinary = {(d["kind"], d["metadata"]["name"]) for d in docs if not is_hook(d)}
    for d in docs:
        if is_hook(d) and d["kind"] in POD_KINDS:
            needs = referenced(d["spec"]["template"]["spec"]) & ordinary
            assert not needs, f"hook {d['metadata']['name']} waits on {needs}"
    # The schema is migrated before a gateway or ledger writer serves: their init container.
    migrate = yaml.safe_load(values.read_text()).get("migrations", {}).get("enabled", True)
    for name, spec in pods(docs):
        if name in ("t-tiergate", "t-tiergate-ledger-drain"):
            inits = [c["args"] for c in spec.get("initContainers", [])]
            assert inits == ([["db", "upgrade"]] if migrate else []), name


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_pods_pass_the_restricted_pod_security_standard(helm: str, values: Path) -> None:
    """Kubernetes' `restricted` level for every pod but the vLLM ones (GPU pods: baseline)."""
    for name, spec in pods(rendered(helm, values)):
        if "-vllm-" in name:
            continue
        psc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (name, key)
        for v in spec.get("volumes", []):
            assert set(v) - {"name"} <= RESTRICTED_VOLUMES, (name, v)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c.get("securityContext", {})
            where = (name, c["name"])
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("readOnlyRootFilesystem") is True, where


def test_gateway_pods_shut_down_within_their_grace_period(helm: str) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "defaults-values.yaml"))
    gw = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-tiergate"
    )
    spec = gw["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > sleep + int(env["TIERGATE_GRACEFUL_SHUTDOWN_S"])
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    annotations = gw["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/catalog", "checksum/secret"} <= set(annotations)
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == sa["metadata"]["name"]


def test_vllm_pods_could_start_on_a_gpu_node(helm: str) -> None:
    docs = render(helm, "-f", str(GPU))
    dep = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-tiergate-vllm-flash"
    )
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert spec["runtimeClassName"] == "nvidia" and "podAntiAffinity" in spec["affinity"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"shm": "/dev/shm", "model-cache": "/root/.cache/huggingface"}
    token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    probe = c["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 1800
    repo, tag = c["image"].rsplit(":", 1)
    assert repo == "vllm/vllm-openai" and tag not in ("", "latest")
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    # Only the gateway reaches the replicas (and the scrapers).
    policy = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "t-tiergate-vllm-flash"
    )
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert policy["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_ingress_and_monitoring_objects(helm: str) -> None:
    docs = render(helm, "-f", str(GPU))
    ing = next(d for d in docs if d["kind"] == "Ingress")
    assert ing["spec"]["tls"] == [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "t-tiergate", "port": {"name": "http"}}
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "t-tiergate", "port": 8080}]
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert sm["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]
    # The ServiceMonitor selects the gateway Service and no other (vLLM, dev Services).
    wanted = sm["spec"]["selector"]["matchLabels"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert len(services) > 1
    selected = [
        s["metadata"]["name"]
        for s in services
        if all(s["metadata"]["labels"].get(k) == v for k, v in wanted.items())
    ]
    assert selected == ["t-tiergate"]


def test_catalog_follows_a_custom_profile(helm: str, tmp_path: Path) -> None:
    """An 8x B200 Flash profile with 1M context: the default catalog prices and routes that."""
    out = tmp_path / "flash.json"
    cli = [sys.executable, "-m", "gateway.cli", "engine", "profile", "flash", "--gpu", "b200"]
    opts = ["--gpus", "8", "--max-model-len", "1048576", "--format", "json"]
    subprocess.run([*cli, *opts, "--write", str(out)], check=True, capture_output=True)
    profile = build("flash", "b200", 8, max_model_len=1_048_576)
    base = ["--set", "secrets.masterKey=x", "--set", "vllm.flash.enabled=true"]
    docs = render(helm, *base, "--set-file", f"vllm.flash.profile={out}")
    cm = next(d for d in docs if d["metadata"]["name"] == "t-tiergate-catalog")
    pool = yaml.safe_load(cm["data"]["catalog.yaml"])["backends"]["flash-pool"]
    assert pool["cost"]["gpus_per_replica"] == profile.gpus == 8
    assert pool["max_model_len"] == profile.max_model_len == 1_048_576
    # A catalog of one's own that disagrees with the profile is refused, naming the key.
    default = yaml.safe_load(cm["data"]["catalog.yaml"])
    default["backends"]["flash-pool"]["cost"]["gpus_per_replica"] = 4
    mine = tmp_path / "catalog.yaml"
    mine.write_text(yaml.safe_dump(default))
    bad = subprocess.run(
        [
            helm,
            "template",
            "t",
            str(CHART),
            *base,
            "--set-file",
            f"vllm.flash.profile={out}",
            "--set-file",
            f"catalog={mine}",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert (
        "catalog backends.flash-pool.cost.gpus_per_replica is 4 but vllm.flash.profile runs "
        "8 GPUs per replica"
    ) in bad.stderr
