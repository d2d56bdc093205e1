"""Lint of infra/: every YAML parses; KubeRay objects have the fields the operator needs and run our jobs;
the cluster-launcher config validates against the schema shipped with the installed Ray; the Dockerfiles
start from Ray's images and install this package with pip from files that exist. (No docker engine and no
Kubernetes here: these are structural checks, not builds or deployments.)"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

INFRA = REPO / "infra"
YAMLS = sorted(INFRA.rglob("*.yaml"))
KUBERAY = sorted((INFRA / "kuberay").glob("*.yaml"))
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _ray_version() -> str:
    import ray

    return ray.__version__


def test_infra_has_the_expected_files():
    names = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.is_file()}
    assert {
        "README.md",
        "docker/Dockerfile.cpu",
        "docker/Dockerfile.cuda",
        "aws/cluster.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob-build.yaml",
        "kuberay/rayjob-train.yaml",
    } <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_yaml_parses(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


# ---- KubeRay ------------------------------------------------------------------------------------------
def _check_pod_template(template: dict, where: str, want_gpu: bool | None = None) -> list[dict]:
    spec = template["spec"]
    containers = spec["containers"]
    assert containers, f"{where}: no containers"
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in containers:
        assert c.get("name"), f"{where}: container without a name"
        image = c.get("image", "")
        assert re.match(r"^[\w.\-/]+:[\w.\-]+$", image) and not image.endswith(":latest"), (
            f"{where}: image {image!r} needs a pinned tag"
        )
        res = c.get("resources", {})
        assert res.get("requests") and res.get("limits"), f"{where}: {c['name']} needs requests and limits"
        for kind in ("requests", "limits"):
            for key, value in res[kind].items():
                assert QUANTITY.match(str(value)), f"{where}: {kind}.{key}={value!r} is not a quantity"
            assert "cpu" in res[kind] and "memory" in res[kind], f"{where}: {kind} needs cpu and memory"
        if want_gpu is not None:
            has_gpu = "nvidia.com/gpu" in res["limits"]
            assert has_gpu == want_gpu, f"{where}: GPU limit {'missing' if want_gpu else 'unexpected'}"
            if want_gpu:
                assert image.endswith("-cuda"), f"{where}: a GPU pod needs the CUDA image, not {image}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: volumeMount {m['name']} has no volume"
    return containers


def _check_ray_cluster_spec(spec: dict, where: str) -> dict[str, dict]:
    assert spec["rayVersion"] == _ray_version(), f"{where}: rayVersion != installed ray {_ray_version()}"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), f"{where}: headGroupSpec.rayStartParams"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), (
        f"{where}: rayStartParams values must be strings"
    )
    _check_pod_template(head["template"], f"{where} head")
    groups = {}
    for g in spec["workerGroupSpecs"]:
        name = g["groupName"]
        assert isinstance(g["rayStartParams"], dict), f"{where}: {name}.rayStartParams"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {name} replicas"
        want_gpu = {"gpu": True, "cpu": False}.get(name)
        _check_pod_template(g["template"], f"{where} {name}", want_gpu)
        groups[name] = g
    assert groups, f"{where}: no workerGroupSpecs"
    return groups


def test_kuberay_raycluster():
    [obj] = _docs(INFRA / "kuberay" / "raycluster.yaml")
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayCluster"
    groups = _check_ray_cluster_spec(obj["spec"], "raycluster.yaml")
    assert set(groups) == {"cpu", "gpu"}
    assert obj["spec"]["enableInTreeAutoscaling"] is True


def _entrypoint(path: Path) -> tuple[dict, list[str]]:
    [obj] = _docs(path)
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayJob", path.name
    assert obj["spec"]["shutdownAfterJobFinishes"] is True
    return obj, shlex.split(obj["spec"]["entrypoint"])


def test_kuberay_build_job_runs_interloom_build_with_remote_output_and_shared_work():
    obj, argv = _entrypoint(INFRA / "kuberay" / "rayjob-build.yaml")
    groups = _check_ray_cluster_spec(obj["spec"]["rayClusterSpec"], "rayjob-build.yaml")
    assert set(groups) == {"cpu"}
    assert argv[:2] == ["interloom", "build"] and argv[argv.index("--address") + 1] == "auto"
    # the entrypoint is a valid command line of `interloom build`, with a config that validates
    from corpus.config import load_config
    from pipeline.build import BuildConfig
    from pipeline.cli import build_parser

    args = build_parser().parse_args(argv[1:])
    cfg = load_config(BuildConfig, args.config, args.overrides)
    assert args.output.startswith("s3://") and all(i.startswith("s3://") for i in args.input)
    # a remote corpus needs a work folder on the volume every pod mounts
    mounts = {
        m["mountPath"] for g in groups.values() for c in g["template"]["spec"]["containers"] for m in c["volumeMounts"]
    }
    assert any(cfg.output.work_dir.startswith(m + "/") for m in mounts), cfg.output.work_dir


def test_kuberay_train_job_runs_interloom_train_on_gpus_with_checkpoints_on_s3():
    obj, argv = _entrypoint(INFRA / "kuberay" / "rayjob-train.yaml")
    groups = _check_ray_cluster_spec(obj["spec"]["rayClusterSpec"], "rayjob-train.yaml")
    assert set(groups) == {"gpu"}
    assert argv[:2] == ["interloom", "train"]
    from corpus.config import load_config
    from pipeline.cli import build_parser
    from train.config import TrainConfig, resolve_recipe

    args = build_parser().parse_args(argv[1:])
    overrides = [f"data.corpus={args.corpus}", f"run.output={args.output}", *args.overrides]
    cfg = load_config(TrainConfig, resolve_recipe(args.config), overrides)
    assert args.address == "auto" and cfg.run.use_gpu and cfg.run.max_failures > 0
    assert cfg.run.storage.startswith("s3://") and cfg.data.corpus.startswith("s3://")
    gpus = sum(
        int(g["replicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in groups.values()
    )
    assert cfg.run.num_workers == gpus, "one Ray Train worker per GPU of the job's cluster"


# ---- cluster launcher ---------------------------------------------------------------------------------
def test_aws_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert schema_path.is_file(), f"installed ray has no {schema_path}"
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    # and Ray's own validation (defaults filled in, schema + its extra rules), as `ray up` runs it
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("p4", "p5", "g5", "g6"))
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-cuda")
    assert config["docker"]["image"].endswith("-cpu")
    assert all(t.get("max_workers", 0) <= config["max_workers"] for t in types.values())


def test_aws_launcher_config_with_an_error_is_rejected():
    """The schema check above can fail: a misspelt key does not validate."""
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    config["docker"]["imagee"] = config["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


# ---- Dockerfiles --------------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name,flavour", [("Dockerfile.cpu", "cpu"), ("Dockerfile.cuda", "gpu")])
def test_dockerfile_installs_interloom_on_rays_image(name, flavour):
    ins = _instructions(INFRA / "docker" / name)
    ops = [op for op, _ in ins]
    assert set(ops) <= {"ARG", "FROM", "USER", "RUN", "WORKDIR", "COPY", "ENV", "LABEL"}, ops
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    [base] = [rest for op, rest in ins if op == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base == f"rayproject/ray:{_ray_version()}-py311-{flavour}", base
    assert ins[-1] == ("WORKDIR", "/home/ray") and [r for op, r in ins if op == "USER"][-1] == "ray"
    # pip installs this package from what was copied, and the copies hold everything it needs
    runs = [rest for op, rest in ins if op == "RUN"]
    assert any(re.search(r"pip install --no-cache-dir \.(\s|$)", r) for r in runs)
    assert any("interloom --help" in r for r in runs)
    copied = [p for op, rest in ins if op == "COPY" for p in rest.split()[:-1] if not p.startswith("--")]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", pyproject["project"]["readme"], *packages} <= set(copied)
    for p in copied:
        if p != pyproject["project"]["readme"]:  # the README is the lead's; pip needs it at build time
            assert (REPO / p).exists(), f"{name}: COPY {p}: no such file in the repo"
