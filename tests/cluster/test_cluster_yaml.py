"""cluster.yaml is a valid Ray autoscaler config (Ray's own schema and launcher preparation, no cloud
calls) with the shape the README promises: a CPU head running MLflow on the private network, GPU
workers from 0 to N on spot, the image from docker/, storage on S3, token auth."""

from __future__ import annotations

import json
import re
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


def test_image_from_docker_dir_and_storage_on_s3(config):
    assert config["docker"]["image"].endswith("/tuner:0.1.0")
    options = " ".join(config["docker"]["run_options"])
    assert "TUNER_STORAGE=s3://" in options
    assert "RAY_AUTH_MODE=token" in options
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
    # The setup checks that the image holds this package at the pinned Ray.
    assert any("import tuner, trainables.trial" in c for c in config["setup_commands"])
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "tuner" in dockerfile and "0.1.0" in (ROOT / "pyproject.toml").read_text()


def test_placeholders_are_the_documented_ones():
    text = (ROOT / "cluster.yaml").read_text()
    assert set(re.findall(r"CHANGE-ME-[A-Z-]*[A-Z]", text)) == PLACEHOLDERS
    readme = (ROOT / "README.md").read_text()
    for placeholder in PLACEHOLDERS:
        assert placeholder in readme, f"README does not say what {placeholder} is"


# Ports that must never face the internet: MLflow, Ray's dashboard/job API, client, GCS, object
# manager, dashboard agent and metrics.
PRIVATE_PORTS = (5000, 8265, 10001, 6379, 8076, 52365, 8080)


def test_nothing_but_ssh_is_open_to_the_internet(config):
    # The rules Ray's AWS provider creates from this file (ray/autoscaler/_private/aws/config.py,
    # _create_default_inbound_rules; importing it needs boto3): all traffic between the cluster's
    # own nodes, SSH from anywhere, then provider.security_group.IpPermissions.
    source = (Path(ray.autoscaler.__file__).parent / "_private" / "aws" / "config.py").read_text()
    assert '"FromPort": 22,' in source and "intracluster_rules,\n        ssh_rules,\n        extended_rules," in source
    ssh = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = [ssh, *extra]
    for rule in rules:
        public = [r for r in rule.get("IpRanges", []) if r.get("CidrIp") == "0.0.0.0/0"] + \
                 [r for r in rule.get("Ipv6Ranges", []) if r.get("CidrIpv6") == "::/0"]
        if not public:
            continue
        assert (rule["FromPort"], rule["ToPort"]) == (22, 22), rule
        assert not any(rule["FromPort"] <= port <= rule["ToPort"] for port in PRIVATE_PORTS), rule


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
