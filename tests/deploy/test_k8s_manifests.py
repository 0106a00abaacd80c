"""Checks of the rendered Kubernetes manifests (k8s/): schema, security, wiring, checkov."""

from __future__ import annotations

import json
import subprocess

import kubernetes_validate
import pytest
from deploy_support import CHECKOV, OVERLAYS, Rendered

# The newest Kubernetes release kubernetes-validate ships schemas for, and one a year older.
K8S_VERSIONS = ("1.34.0", "1.37.0")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
SECRETS = {"noisyad-minio", "noisyad-s3", "noisyad-postgres", "noisyad-serving"}


def _pod_specs(result: Rendered) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in result.objects
        if o["kind"] in WORKLOADS
    ]


def _containers(result: Rendered) -> list[tuple[str, dict, dict]]:
    return [
        (f"{where}/{c['name']}", pod, c)
        for where, pod in _pod_specs(result)
        for c in pod.get("initContainers", []) + pod["containers"]
    ]


def test_every_overlay_renders(rendered: dict[str, Rendered]) -> None:
    assert set(OVERLAYS) == {"dev", "gpu-prod"}
    for overlay, result in rendered.items():
        kinds = {o["kind"] for o in result.objects}
        assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
        assert {"PodDisruptionBudget", "NetworkPolicy", "Job", "Namespace"} <= kinds
        assert all(
            o["metadata"].get("namespace") == "noisyad"
            for o in result.objects
            if o["kind"] != "Namespace"
        ), f"{overlay}: every object belongs in namespace noisyad"
    assert not rendered["dev"].of_kind("Secret") and not rendered["gpu-prod"].of_kind("Secret")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_matches_the_openapi_schema(
    rendered: dict[str, Rendered], version: str
) -> None:
    failures = []
    for overlay, result in rendered.items():
        for obj in result.objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{overlay} {obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert not failures, "\n".join(failures)


def test_every_container_is_locked_down(rendered: dict[str, Rendered]) -> None:
    for overlay, result in rendered.items():
        for where, pod, container in _containers(result):
            context = container.get("securityContext", {})
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{overlay} {where}"
            assert pod["securityContext"]["runAsUser"] >= 10000, f"{overlay} {where}"
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert pod["automountServiceAccountToken"] is False, f"{overlay} {where}"
            assert context.get("readOnlyRootFilesystem") is True, f"{overlay} {where}"
            assert context.get("allowPrivilegeEscalation") is False, f"{overlay} {where}"
            assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{overlay} {where}"
            assert {"requests", "limits"} <= set(container["resources"]), f"{overlay} {where}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{overlay} {where}: /tmp emptyDir"


def test_secrets_are_referenced_never_inlined(rendered: dict[str, Rendered]) -> None:
    for overlay, result in rendered.items():
        for where, pod, container in _containers(result):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in SECRETS, f"{overlay} {where}: {ref['name']}"
                else:
                    name = env["name"].upper()
                    secret_like = "PASSWORD" in name or "SECRET" in name
                    assert not secret_like or name.endswith("_FILE"), f"{where}: {name}"
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in SECRETS


def test_images_are_pinned(rendered: dict[str, Rendered]) -> None:
    for overlay, result in rendered.items():
        for where, _, container in _containers(result):
            image = container["image"]
            own = "noisyad-" in image.rsplit("/", 1)[-1]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            assert own or "@sha256:" in image, f"{overlay} {where}: {image} has no digest"


def test_serving_probes_scaling_and_disruption_budget(rendered: dict[str, Rendered]) -> None:
    for overlay, result in rendered.items():
        deployment = result.named("Deployment", "noisyad-serving")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert "--model=$(NOISYAD_MODEL_URI)" in container["args"]
        hpa = result.named("HorizontalPodAutoscaler", "noisyad-serving")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "noisyad-serving"
        assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > 1
        pdb = result.named("PodDisruptionBudget", "noisyad-serving")
        budget = pdb["spec"].get("minAvailable", 0)
        assert budget < hpa["spec"]["minReplicas"] or "maxUnavailable" in pdb["spec"], overlay
        assert result.named("Service", "noisyad-serving")["spec"]["ports"][0]["port"] == 8080


def test_mlflow_proxies_artifacts_to_s3_and_stores_runs_in_postgres(
    rendered: dict[str, Rendered],
) -> None:
    for result in rendered.values():
        mlflow = result.named("Deployment", "mlflow")["spec"]["template"]["spec"]
        args = mlflow["containers"][0]["args"]
        assert "--serve-artifacts" in args
        assert "--artifacts-destination=$(ARTIFACTS_DESTINATION)" in args
        # psycopg2 named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not in the image
        assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://") for a in args)
        config = result.named("ConfigMap", "mlflow")["data"]
        assert config["artifacts-destination"].startswith("s3://")
        assert result.named("StatefulSet", "postgres") and result.named("StatefulSet", "minio")


def test_triton_only_in_the_gpu_overlay_with_one_gpu(rendered: dict[str, Rendered]) -> None:
    assert not [o for o in rendered["dev"].objects if o["metadata"]["name"] == "triton"]
    triton = rendered["gpu-prod"].named("Deployment", "triton")["spec"]["template"]["spec"]
    container = triton["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    repository = rendered["gpu-prod"].named("ConfigMap", "triton")["data"]["model-repository"]
    assert repository.startswith("s3://http://minio.")


def test_network_policies_deny_by_default_and_cover_every_workload(
    rendered: dict[str, Rendered],
) -> None:
    for overlay, result in rendered.items():
        policies = result.of_kind("NetworkPolicy")
        deny = result.named("NetworkPolicy", "default-deny")["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        selected = {
            p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
            for p in policies
        }
        for obj in result.objects:
            if obj["kind"] in ("Deployment", "StatefulSet"):
                name = obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                assert name in selected, f"{overlay}: no NetworkPolicy admits traffic to {name}"


@pytest.fixture(scope="session")
def checkov_report(rendered_dir) -> list[dict]:
    """One checkov run over every rendered overlay and every Dockerfile (JSON report)."""
    if not CHECKOV.exists():
        pytest.fail(
            f"checkov is not installed at {CHECKOV}. Run: bash scripts/setup-tools.sh "
            f"(scripts/test.sh runs it before the tests)."
        )
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(rendered_dir), "--framework", "kubernetes",
         "dockerfile", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.stdout.strip(), f"checkov printed nothing:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


@pytest.mark.slow
def test_checkov_has_no_failed_checks_and_every_skip_has_a_reason(
    checkov_report: list[dict], capsys: pytest.CaptureFixture[str]
) -> None:
    frameworks = {r["check_type"] for r in checkov_report}
    assert frameworks == {"kubernetes", "dockerfile"}, frameworks
    failed, skipped = [], []
    for report in checkov_report:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        results = report["results"]
        failed += [
            f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
            for c in results["failed_checks"]
        ]
        skipped += [
            (
                c["check_id"],
                c["resource"],
                (c["check_result"].get("suppress_comment") or "").strip(),
            )
            for c in results["skipped_checks"]
        ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert all(reason for _, _, reason in skipped), f"skips without a reason: {skipped}"
    with capsys.disabled():
        print(f"\ncheckov: 0 failed, {len(skipped)} skipped with a reason")
