"""cluster.yaml is a valid Ray autoscaler config (Ray's own schema and launcher preparation, no cloud
calls) with the shape the README promises: a CPU head running MLflow on the private network, GPU
workers from 0 to N on spot, the image from docker/, storage on S3, token auth."""

from __future__ import annotations

import importlib
import json
import re
import sys
import tomllib
import types
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = {"CHANGE-ME-ACCOUNT", "CHANGE-ME-REGION", "CHANGE-ME-BUCKET", "CHANGE-ME-GPU-AMI"}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_valid_against_rays_own_schema(config):
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))


def test_the_launcher_prepares_it(config):
    # What `ray up` does to the file before touching AWS: defaults merged, docker checked, validated.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_a_cpu_head_that_runs_no_trial(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "GPU" not in head["resources"]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # no GPU instance
    start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in start


def test_gpu_workers_scale_from_zero_on_spot(config):
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert workers["resources"]["GPU"] >= 1
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert config["max_workers"] >= workers["max_workers"]


def test_mlflow_on_the_heads_private_address_never_the_internet(config):
    start = " ".join(config["head_start_ray_commands"])
    server = re.search(r"mlflow server (.*?)(>|$)", start).group(1)
    assert "--host $(hostname -I | awk '{print $1}')" in server  # the private address
    assert "0.0.0.0" not in start
    assert "--artifacts-destination s3://" in server
    # Ray's security group opens only SSH to the world; nothing here adds a public rule.
    assert "security_group" not in config["provider"]
    assert "--dashboard-host=127.0.0.1" in start


def node_images(prepared: dict) -> dict[str, str]:
    """The image each node type runs, resolved as Ray's launcher does: the cluster-wide ``docker``
    section updated by the node type's own (autoscaler.py, _get_node_specific_docker_config), then
    ``head_image``/``worker_image`` over ``image`` (command_runner.py, DockerCommandRunner)."""
    images = {}
    for name, node_type in prepared["available_node_types"].items():
        docker = {**prepared["docker"], **node_type.get("docker", {})}
        role = "head" if name == prepared["head_node_type"] else "worker"
        images[name] = docker.get(f"{role}_image", docker["image"])
    return images


def test_every_node_runs_the_image_built_from_docker_dir(config):
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(config)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = f"CHANGE-ME-ACCOUNT.dkr.ecr.CHANGE-ME-REGION.amazonaws.com/tuner:{version}"
    assert node_images(prepared) == {"head": image, "gpu_worker": image}
    # The Dockerfile builds that tag from this checkout: both packages copied in and installed, checked.
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"docker build -f docker/Dockerfile -t tuner:{version} ." in dockerfile
    steps = [line.split()[-2:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert ["tuner", "./tuner"] in steps and ["trainables", "./trainables"] in steps
    assert ('RUN pip install --no-cache-dir --no-deps . \\\n    && python -c "import tuner, trainables.trial"'
            in dockerfile)
    # Every node, head and workers, checks at setup that its image holds this package at the pin.
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        assert any("import tuner, trainables.trial" in c for c in commands), commands


def test_storage_on_s3_and_token_auth_in_every_container(config):
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(config)
    options = " ".join(prepared["docker"]["run_options"])
    assert "TUNER_STORAGE=s3://CHANGE-ME-BUCKET/tuner/runs" in options
    assert "RAY_AUTH_MODE=token" in options
    assert not any("docker" in node_type for node_type in prepared["available_node_types"].values())
    assert prepared["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_placeholders_are_the_documented_ones():
    text = (ROOT / "cluster.yaml").read_text()
    assert set(re.findall(r"CHANGE-ME-[A-Z-]*[A-Z]", text)) == PLACEHOLDERS
    guide = (ROOT / "docs" / "cluster.md").read_text()  # the cluster guide the README links
    for placeholder in PLACEHOLDERS:
        assert placeholder in guide, f"docs/cluster.md does not say what {placeholder} is"


# Ports that must never face the internet: MLflow, Ray's dashboard/job API, client, GCS, object
# manager, dashboard agent and metrics.
PRIVATE_PORTS = (5000, 8265, 10001, 6379, 8076, 52365, 8080)


def aws_launcher(monkeypatch):
    """Ray's AWS provider module (ray/autoscaler/_private/aws/config.py). It imports boto3 and
    botocore at module level; the functions used here are pure, so where boto3 is not installed
    (it is a cluster-only dependency, in the image) empty stand-ins let the module import."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        names = ["boto3", "boto3.exceptions", "boto3.resources", "boto3.resources.base", "botocore",
                 "botocore.client", "botocore.config", "botocore.exceptions"]
        for name in names:
            stub = types.ModuleType(name)
            stub.__version__ = "1.44.5"  # the image's pin (docker/Dockerfile); Ray compares it
            stub.__getattr__ = lambda attr, _name=name: type(attr, (Exception,), {})
            monkeypatch.setitem(sys.modules, name, stub)
        for name in [n for n in sys.modules if n.startswith("ray.autoscaler._private.aws")]:
            monkeypatch.delitem(sys.modules, name)
    before = set(sys.modules)
    module = importlib.import_module("ray.autoscaler._private.aws.config")
    for name in set(sys.modules) - before:  # forgotten after the test: imported over stand-ins
        monkeypatch.setitem(sys.modules, name, sys.modules[name])
    return module


class RecordingGroup:
    """A security group as Ray's AWS provider sees one: new (no rules yet), records what is opened."""

    def __init__(self, group_id: str) -> None:
        self.id, self.ip_permissions, self.opened = group_id, [], None

    def authorize_ingress(self, IpPermissions):  # noqa: N803 (boto3's keyword)
        self.opened = IpPermissions


def test_nothing_but_ssh_is_open_to_the_internet(config, monkeypatch):
    # What `ray up` opens for this file: Ray's own rule builder (_upsert_security_group_rules, the
    # step of bootstrap_aws after the groups exist) run on the prepared config, groups recorded.
    from ray.autoscaler._private.util import prepare_config

    launcher = aws_launcher(monkeypatch)
    groups = {"head": RecordingGroup("sg-head"), "gpu_worker": RecordingGroup("sg-worker")}
    launcher._upsert_security_group_rules(prepare_config(config), groups)
    for group in groups.values():
        assert group.opened, "Ray opened nothing: the rule builder was not reached"
        public = [rule for rule in group.opened
                  if {"CidrIp": "0.0.0.0/0"} in rule.get("IpRanges", [])
                  or {"CidrIpv6": "::/0"} in rule.get("Ipv6Ranges", [])
                  or rule.get("PrefixListIds")]
        assert public == [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
                           "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}], group.opened
        # Everything else is between the cluster's own groups: MLflow, dashboard, GCS stay inside.
        others = [rule for rule in group.opened if rule not in public]
        assert others == [{"FromPort": -1, "ToPort": -1, "IpProtocol": "-1",
                            "UserIdGroupPairs": [{"GroupId": "sg-head"}, {"GroupId": "sg-worker"}]}]
        for rule in public:
            assert not any(rule["FromPort"] <= port <= rule["ToPort"] for port in PRIVATE_PORTS)


def test_mlflow_asks_for_a_password_kept_out_of_the_file(config):
    start = " ".join(config["head_start_ray_commands"])
    server = re.search(r"mlflow server (.*?)(>|$)", start).group(1)
    assert "--app-name basic-auth" in server
    assert "MLFLOW_AUTH_CONFIG_PATH=/home/ray/tuner-state/mlflow/basic_auth.ini" in start
    # Credentials come from the mounted env file, on the head only, never as literals.
    assert config["file_mounts"]["/home/ray/.tuner/mlflow.env"] == "~/.tuner/mlflow.env"
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD" in start
    code = [line for line in (ROOT / "cluster.yaml").read_text().splitlines()
            if not line.lstrip().startswith("#")]
    assert not any(re.search(r"PASSWORD=[^$\s]", line) for line in code)
    assert "mlflow[auth]==" in (ROOT / "docker" / "Dockerfile").read_text()
    # The drivers on the head (jobs inherit `ray start`'s environment) log in with the same file.
    assert start.index(". /home/ray/.tuner/mlflow.env") < start.index("ray start --head")


def test_ray_token_auth_stays_on_everywhere(config):
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert "RAY_AUTH_MODE=disabled" not in (ROOT / "cluster.yaml").read_text()
