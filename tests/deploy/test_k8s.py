"""The Kubernetes pieces and the Dockerfile: the Deployment and Service validated against
Kubernetes' own schemas (kubernetes-validate, strict: unknown fields refused), the KServe
InferenceService against a minimal schema of its own (KServe's CRD schema does not install from
PyPI) with its predictor's pod fields against Kubernetes' PodSpec; and all of them wired to what
the server and the image really offer (probe paths, port, user)."""

from __future__ import annotations

import re
import shlex

import jsonschema
import pytest
import yaml

from scoreline.server.app import create_app

from tests.support.deploy import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"
# the predictor's own fields in KServe's v1beta1 PredictorSpec; everything else there is PodSpec
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 1},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 1},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
}
INFERENCE_SERVICE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object", "required": ["name"],
            # KServe names become DNS-1035 labels (a Knative service and its routes)
            "properties": {"name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object", "required": ["predictor"], "additionalProperties": False,
            "properties": {"predictor": {
                "type": "object", "required": ["containers"],
                "properties": {**KSERVE_PREDICTOR_FIELDS,
                               # a custom predictor is one container, named as KServe expects
                               "containers": {"type": "array", "minItems": 1, "maxItems": 1,
                                              "items": {"type": "object", "required": ["name", "image"],
                                                        "properties": {"name": {"const": "kserve-container"}}}}},
            }},
        },
    },
}


def _documents(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _kinds():
    docs = _documents("deployment.yaml")
    return {d["kind"]: d for d in docs}


def _validate_k8s(resource):
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{resource['kind']}: {exc}")


def _predictor_as_pod(isvc):
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k not in KSERVE_PREDICTOR_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": spec}


def _containers():
    yield _kinds()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    isvc, = _documents("inferenceservice.yaml")
    yield isvc["spec"]["predictor"]["containers"][0]


def _port_of(probe, container):
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        port, = (p["containerPort"] for p in container["ports"] if p.get("name") == port)
    return port


def _dockerfile():
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_deployment_and_service_are_valid_kubernetes():
    kinds = _kinds()
    assert set(kinds) == {"Deployment", "Service"}
    for resource in kinds.values():
        _validate_k8s(resource)
    deployment, service = kinds["Deployment"], kinds["Service"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    port, = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_inference_service_is_valid():
    isvc, = _documents("inferenceservice.yaml")
    jsonschema.validate(isvc, INFERENCE_SERVICE)
    _validate_k8s(_predictor_as_pod(isvc))


def test_validation_refuses_a_broken_manifest():
    deployment = _kinds()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    isvc, = _documents("inferenceservice.yaml")
    isvc["spec"]["predictor"]["containers"][0]["name"] = "scoreline"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(isvc, INFERENCE_SERVICE)


def test_probes_and_ports_match_the_server_and_the_image():
    paths = {route.path for route in create_app(engine=object()).routes}
    steps = _dockerfile()
    cmd = next(args for op, args in reversed(steps) if op == "CMD")
    image_port = int(re.search(r'"--port", "(\d+)"', cmd).group(1))
    assert ("EXPOSE", str(image_port)) in steps
    healthcheck = next(args for op, args in steps if op == "HEALTHCHECK")
    assert f"127.0.0.1:{image_port}/readyz" in healthcheck
    for container in _containers():
        args = container["args"]
        assert args[:2] == ["scoreline", "serve"]
        port = int(args[args.index("--port") + 1])
        assert port == image_port and port in {p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for name in ("readinessProbe", "livenessProbe", "startupProbe"):
            if name in container:
                assert container[name]["httpGet"]["path"] in paths
                assert _port_of(container[name], container) == port
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_image_is_multi_stage_non_root_and_built_by_the_script():
    steps = _dockerfile()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("${PYTHON_IMAGE}") for s in stages)
    python_image = next(args for op, args in steps if op == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert "-slim" in python_image
    runs = [shlex.split(args) for op, args in steps if op == "RUN"]
    assert any(w.endswith("deploy/build.sh") and "install" in r for r in runs for w in r)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    user = [args for op, args in final if op == "USER"]
    assert user and user[-1] not in {"root", "0"}
    uid = re.search(r"--uid (\d+)", next(args for op, args in final if op == "RUN" and "useradd" in args)).group(1)
    warm = [i for i, (op, args) in enumerate(final) if op == "RUN" and "build.sh warm" in args]
    assert warm and warm[0] > next(i for i, (op, _) in enumerate(final) if op == "USER")  # caches owned by the user
    deployment = _kinds()["Deployment"]["spec"]["template"]["spec"]
    isvc, = _documents("inferenceservice.yaml")
    for pod in (deployment, isvc["spec"]["predictor"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == uid
