"""ensembles/deploy/: the Helm chart renders valid, hardened manifests for two Kubernetes versions, its schema
rejects wrong types, the HPA's adapter rule names metrics the real tritonserver exports, and the KServe manifest
uses only fields of KServe's InferenceService CRD. No cluster here: this checks manifests, not a running pod."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import k8s_tools
import pytest
import yaml

from tdet.client.loadtest.metrics import scrape

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "ensembles" / "deploy" / "helm" / "tdet"
VALUES = {"default": [], "cpu": ["-f", str(CHART / "values-cpu.yaml")],
          "autoscaling": ["-f", str(CHART / "values-autoscaling.yaml")]}
K8S_VERSIONS = ("1.30.0", "1.34.0")
CRDS = {"ServiceMonitor"}  # Prometheus Operator CRD: no schema in kubernetes-validate


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return k8s_tools.helm()
    except k8s_tools.Missing as why:
        pytest.skip(str(why))


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, extra in VALUES.items():
        res = _helm(helm, "template", "tdet", str(CHART), "--namespace", "tdet", *extra)
        assert res.returncode == 0, res.stderr
        files[name] = out / f"{name}.yaml"
        files[name].write_text(res.stdout)
    return files


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("values", list(VALUES))
def test_helm_lint_strict(helm, values):
    res = _helm(helm, "lint", "--strict", str(CHART), *VALUES[values])
    assert res.returncode == 0 and "0 chart(s) failed" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_rendered_manifests_pass_kubernetes_validate_strict(rendered, k8s):
    exe = Path(sys.executable).parent / "kubernetes-validate"
    res = subprocess.run([str(exe), "--strict", "-k", k8s, *map(str, rendered.values())],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    unknown = {m.group(1) for m in re.finditer(r"Couldn't find schema for kind (\w+)", res.stdout + res.stderr)}
    assert unknown <= CRDS, unknown  # everything else was really checked
    kinds = {d["kind"] for p in rendered.values() for d in _docs(p)}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler",
            "ConfigMap", "ServiceMonitor", "ServiceAccount"} <= kinds


def test_a_misspelt_field_fails_strict_validation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  prots: [{port: 1}]\n")
    exe = Path(sys.executable).parent / "kubernetes-validate"
    res = subprocess.run([str(exe), "--strict", "-k", K8S_VERSIONS[0], str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "prots" in res.stdout + res.stderr


def test_the_deployment_is_what_the_values_ask(rendered):
    def triton(name):
        return next(d for d in _docs(rendered[name]) if d["kind"] == "Deployment"
                    and d["metadata"]["labels"]["app.kubernetes.io/component"] == "tritonserver")
    gpu, cpu, auto = triton("default"), triton("cpu"), triton("autoscaling")
    pod = gpu["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert {c["startupProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"],
            c["livenessProbe"]["httpGet"]["path"]} == {"/v2/health/ready", "/v2/health/live"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=s3://my-bucket/tdet/model_repository" in c["args"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]
    assert shm["medium"] == "Memory"
    cc = cpu["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cc["resources"]["limits"] and "--model-repository=/models" in cc["args"]
    assert any(v.get("persistentVolumeClaim") for v in cpu["spec"]["template"]["spec"]["volumes"])
    assert "replicas" not in auto["spec"]  # the HPA owns the replica count
    args = auto["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--model-repository=gs://") for a in args)


@pytest.mark.parametrize("setting", ["replicaCount=two", "gpu.count=one", "autoscaling.enabled=yes",
                                     "modelRepository.source=ftp", "ports.grpc=99999"])
def test_schema_rejects_wrong_values(helm, setting):
    key, value = setting.split("=")
    res = _helm(helm, "template", "tdet", str(CHART), "--set-string" if not value.isdigit() else "--set", setting)
    assert res.returncode != 0, res.stderr
    assert key.split(".")[-1] in res.stderr and "values don't meet the specifications" in res.stderr, res.stderr


def test_checkov_reports_no_failed_check(rendered):
    try:
        exe = k8s_tools.checkov()
    except k8s_tools.Missing as why:
        pytest.skip(str(why))
    res = subprocess.run([str(exe), "--config-file", str(CHART / ".checkov.yaml"),
                          "-d", str(rendered["default"].parent), "-o", "json", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    report = json.loads(res.stdout)
    s = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    reports = [report] if isinstance(report, dict) else report
    failed = [c["check_id"] for r in reports for c in r["results"]["failed_checks"]]
    assert res.returncode == 0 and s["failed"] == 0 and s["passed"] > 100, failed


def test_the_autoscaling_rule_uses_metrics_the_server_exports(rendered, served):
    docs = _docs(rendered["autoscaling"])
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    rule = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"])["rules"][0]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["name"]["as"] == metric
    model = re.search(r'model="([^"]+)"', rule["seriesQuery"]).group(1)
    names = set(re.findall(r"\b(nv_\w+)\{", rule["seriesQuery"] + rule["metricsQuery"]))
    exported = scrape(served.metrics_url)
    assert names == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    assert model in exported and names <= set(exported[model]), (model, sorted(exported))


def _check_fields(doc, schema, path="") -> list[str]:
    """Fields the CRD does not know at their level, and values of the wrong type."""
    errors = []
    kind = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict}.get(schema.get("type"))
    if schema.get("x-kubernetes-int-or-string"):
        kind = (int, str)
    if kind and not isinstance(doc, kind):
        errors.append(f"{path}: {type(doc).__name__} is not {schema.get('type')}")
    if isinstance(doc, dict) and "allowed" in schema:
        errors += [f"{path}.{k}: not a field" for k in doc if k not in schema["allowed"]]
        for k, v in doc.items():
            if k in schema.get("properties", {}):
                errors += _check_fields(v, schema["properties"][k], f"{path}.{k}")
    elif isinstance(doc, dict) and "additionalProperties" in schema:
        for k, v in doc.items():
            errors += _check_fields(v, schema["additionalProperties"], f"{path}.{k}")
    elif isinstance(doc, list) and "items" in schema:
        for i, v in enumerate(doc):
            errors += _check_fields(v, schema["items"], f"{path}[{i}]")
    return errors


def test_kserve_manifest_uses_only_inferenceservice_fields():
    schema = json.loads((ROOT / "tests/fixtures/kserve_inferenceservice_schema.json").read_text())["schema"]
    doc = yaml.safe_load((ROOT / "ensembles/deploy/kserve/inferenceservice.yaml").read_text())
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert _check_fields(doc, schema) == []
    assert doc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "triton"
    misspelt = json.loads(json.dumps(doc))
    misspelt["spec"]["predictor"]["model"]["storageURI"] = misspelt["spec"]["predictor"]["model"].pop("storageUri")
    misspelt["spec"]["predictor"]["minReplicas"] = "1"
    assert _check_fields(misspelt, schema) == [".spec.predictor.minReplicas: str is not integer",
                                               ".spec.predictor.model.storageURI: not a field"]
