"""cluster.yaml is a valid Ray autoscaler config (Ray's own schema and launcher preparation, no cloud
calls) with the shape the README promises: a CPU head running MLflow on the private network, GPU
workers from 0 to N on spot, the image from docker/, storage on S3, token auth; and it is locked
down: the MLflow password never reaches a worker, Ray creates no security group and no IAM role,
SSH comes only from the CIDR you fill in, each node type has its own least-privilege instance
profile (aws/*.json), every node requires IMDSv2."""

from __future__ import annotations

import copy
import fnmatch
import importlib
import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "aws"  # the IAM policies and the SSH rule you create before `ray up` (docs/cluster.md)
PLACEHOLDERS = {"CHANGE-ME-ACCOUNT", "CHANGE-ME-REGION", "CHANGE-ME-BUCKET", "CHANGE-ME-GPU-AMI",
                "CHANGE-ME-HEAD-SG", "CHANGE-ME-WORKER-SG", "CHANGE-ME-SSH-CIDR"}


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


def test_mlflow_on_the_heads_loopback_only(config):
    start = " ".join(config["head_start_ray_commands"])
    server = re.search(r"mlflow server (.*?)(>|$)", start).group(1)
    # Not even the VPC reaches it: its plain-HTTP login never crosses the network.
    assert re.search(r"--host (\S+)", server).group(1) == "127.0.0.1"
    assert "0.0.0.0" not in start and "hostname -I" not in start
    # The drivers (on the head) log to the same loopback address.
    setup = " ".join(config["head_setup_commands"])
    for commands in (start, setup):
        assert set(re.findall(r"TUNER_TRACKING_URI=(\S+)", commands)) == {"http://127.0.0.1:5000"}
    assert "--artifacts-destination s3://" in server
    # Ray's security group opens only SSH to the world; nothing here adds a public rule.
    assert "security_group" not in config["provider"]
    assert "--dashboard-host=127.0.0.1" in start


def test_the_drivers_state_key_stays_on_the_heads_volume(config):
    """The key that signs the search state in S3 (tuner/search/seal.py) is made by the drivers on
    the head, on the volume only the head's container mounts (test_no_worker_node_gets_the_mlflow_
    password checks the volume); no worker is told of it, or it could sign what it plants."""
    for commands in (config["head_start_ray_commands"], config["head_setup_commands"]):
        keys = set(re.findall(r"TUNER_STATE_KEY=([^\s;\"]+)", " ".join(commands)))
        assert keys == {"/home/ray/tuner-state/state.key"}
    _, remote = launcher_configs(config)
    received = json.dumps(what_each_worker_gets(remote))
    assert "TUNER_STATE_KEY" not in received and "state.key" not in received


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
    text = "\n".join(path.read_text() for path in [ROOT / "cluster.yaml", *sorted(AWS.glob("*.json"))])
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


def test_ray_opens_no_security_group_and_ssh_comes_only_from_your_cidr(config, monkeypatch):
    # Ray's AWS launcher opens SSH to 0.0.0.0/0 on every security group it creates
    # (_create_default_ssh_inbound_rules); it creates one for each node type without
    # SecurityGroupIds. Run its security-group step (bootstrap_aws) on the prepared config: it must
    # find the groups you made and create none.
    from ray.autoscaler._private.util import prepare_config

    launcher = aws_launcher(monkeypatch)

    def creates_groups(*args, **kwargs):
        raise AssertionError("Ray would create a security group, with SSH open to 0.0.0.0/0")

    monkeypatch.setattr(launcher, "_upsert_security_groups", creates_groups)
    bootstrapped = launcher._configure_security_group(copy.deepcopy(prepare_config(config)))
    groups = {name: node_type["node_config"]["SecurityGroupIds"]
              for name, node_type in bootstrapped["available_node_types"].items()}
    assert groups == {"head": ["CHANGE-ME-HEAD-SG"], "gpu_worker": ["CHANGE-ME-WORKER-SG"]}
    # The only rule that lets anything in from outside the cluster: SSH to the head, from your CIDR.
    ssh = json.loads((AWS / "head-ssh-ingress.json").read_text())
    assert [{k: v for k, v in rule.items() if k != "IpRanges"} for rule in ssh] == \
        [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}]
    assert [r["CidrIp"] for r in ssh[0]["IpRanges"]] == ["CHANGE-ME-SSH-CIDR"]
    for port in PRIVATE_PORTS:
        assert not any(rule["FromPort"] <= port <= rule["ToPort"] for rule in ssh)
    code = "\n".join(line for line in (ROOT / "cluster.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for path in AWS.glob("*.json"):
        code += path.read_text()
    assert "0.0.0.0/0" not in code and "::/0" not in code
    assert "security_group" not in config["provider"]  # rules Ray would add to groups it creates


def launcher_configs(config: dict) -> tuple[dict, dict]:
    """What `ray up` makes of cluster.yaml, without AWS: the prepared and validated config the head
    is set up with, and the copy the launcher writes to the head (~/ray_bootstrap_config.yaml,
    commands._set_up_config_for_head_node), which the head's autoscaler reads to start workers."""
    from ray.autoscaler._private.commands import _set_up_config_for_head_node
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.autoscaler.node_provider import NodeProvider

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    provider = NodeProvider(prepared["provider"], prepared["cluster_name"])  # AWS's inherits this step
    head_config, bootstrap_file = _set_up_config_for_head_node(copy.deepcopy(prepared), provider,
                                                               no_restart=False)
    try:
        remote = json.loads(Path(bootstrap_file.name).read_text())
    finally:
        bootstrap_file.close()
    return head_config, remote


def what_each_worker_gets(remote: dict) -> dict[str, dict]:
    """Everything the head's autoscaler hands a new worker node's updater (autoscaler v2's
    RayInstaller.install_ray, the getters it calls; v1 resolves the same fields): the files
    copied to it, the commands run on it (host and container), its container's run options."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    autoscaling = AutoscalingConfig(copy.deepcopy(remote), skip_content_hash=True)
    received = {}
    for node_type in remote["available_node_types"]:
        if node_type == remote["head_node_type"]:
            continue
        docker = autoscaling.get_docker_config(node_type)
        received[node_type] = {
            "file_mounts": autoscaling.get_config("file_mounts"),
            "cluster_synced_files": autoscaling.get_config("cluster_synced_files"),
            "initialization_commands": autoscaling.get_initialization_commands(node_type),
            "setup_commands": autoscaling.get_worker_setup_commands(node_type),
            "start_ray_commands": autoscaling.get_worker_start_ray_commands(),
            "docker_run_options": docker.get("run_options", []) + docker.get("worker_run_options", []),
            "node_config": autoscaling.get_cloud_node_config(node_type),
        }
    return received


MLFLOW_ENV = "/home/ray/tuner-state/mlflow.env"  # the admin's user name and password, on the head


def test_no_worker_node_gets_the_mlflow_password(config):
    head_config, remote = launcher_configs(config)
    workers = what_each_worker_gets(remote)
    assert set(workers) == {"gpu_worker"}
    for node_type, received in workers.items():
        assert received["file_mounts"] and received["setup_commands"]  # the view is not empty
        text = json.dumps(received)
        for marker in ("mlflow.env", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                       "tuner-state:/home/ray/tuner-state"):
            assert marker not in text, f"a {node_type} node gets {marker}: {text}"
    # Nothing that Ray copies to every node names it (file_mounts go to the head AND the workers).
    assert not [path for path in {**head_config["file_mounts"], **remote["file_mounts"]}.items()
                if "mlflow" in " ".join(path)]
    # The head makes it itself, readable by its owner only, on the volume only its container mounts.
    setup = head_config["head_setup_commands"]
    made = next(c for c in setup if f"> {MLFLOW_ENV}" in c)
    assert made.startswith(f"test -s {MLFLOW_ENV} ||") and "umask 077" in made
    assert "secrets.token_urlsafe" in made
    assert f"chmod 600 {MLFLOW_ENV}" in setup[setup.index(made) + 1]
    head_volume = "--volume /home/ubuntu/tuner-state:/home/ray/tuner-state"
    assert head_volume in head_config["docker"]["head_run_options"]
    assert not any("tuner-state" in option for option in head_config["docker"]["run_options"])
    # The drivers on the head (jobs inherit `ray start`'s environment) log in with it.
    start = " ".join(head_config["head_start_ray_commands"])
    assert start.index(f". {MLFLOW_ENV}") < start.index("ray start --head")


def test_the_admin_password_is_made_as_the_head_setup_says(tmp_path):
    # Run the head's own command (as `ray up` would, in bash) with the file's path moved to tmp.
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    made = next(c for c in config["head_setup_commands"] if f"> {MLFLOW_ENV}" in c)
    target = tmp_path / "mlflow.env"
    command = made.replace(MLFLOW_ENV, str(target)).replace("python ", f"{sys.executable} ", 1)
    subprocess.run(["bash", "-c", command], check=True)
    first = target.read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    lines = dict(line.split("=", 1) for line in first.splitlines())
    assert lines["MLFLOW_TRACKING_USERNAME"] == "admin" and len(lines["MLFLOW_TRACKING_PASSWORD"]) >= 32
    subprocess.run(["bash", "-c", command], check=True)  # a restart keeps the admin's password
    assert target.read_text() == first


def iam_allows(policy: dict, action: str, resource: str) -> bool:
    """IAM's verdict for one request, conditions counted as met (so "never allowed" is strict): some
    statement allows it and none denies it. Wildcards as IAM matches them (actions case-insensitive)."""

    def listed(patterns, value: str, fold: bool) -> bool:
        patterns = [patterns] if isinstance(patterns, str) else patterns
        return any(fnmatch.fnmatchcase(value.lower() if fold else value, p.lower() if fold else p)
                   for p in patterns)

    effects = {statement["Effect"] for statement in policy["Statement"]
               if listed(statement["Action"], action, True)
               and listed(statement["Resource"], resource, False)}
    return "Allow" in effects and "Deny" not in effects


BUCKET = "arn:aws:s3:::CHANGE-ME-BUCKET"
WORKER_ROLE = "arn:aws:iam::CHANGE-ME-ACCOUNT:role/tuner-gpu-worker"
IMAGE_REPO = "arn:aws:ecr:CHANGE-ME-REGION:CHANGE-ME-ACCOUNT:repository/tuner"


def policy(name: str) -> dict:
    document = json.loads((AWS / name).read_text())
    for statement in document["Statement"]:  # what iam_allows reads, and nothing it would misread
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, statement
    return document


def test_ray_creates_no_iam_role_each_node_type_has_its_own_profile(config, monkeypatch):
    # Without an IamInstanceProfile on the head, `ray up` makes ray-autoscaler-v1 with
    # AmazonEC2FullAccess and AmazonS3FullAccess (_configure_iam_role). Run that step.
    from ray.autoscaler._private.util import prepare_config

    launcher = aws_launcher(monkeypatch)

    def makes_a_role(*args, **kwargs):
        raise AssertionError("Ray would make its default role (EC2 and S3 full access)")

    monkeypatch.setattr(launcher, "_get_instance_profile", makes_a_role)
    prepared = {**prepare_config(config), "head_node": {}}
    assert launcher._configure_iam_role(copy.deepcopy(prepared))["head_node"] == {}
    profiles = {name: node_type["node_config"]["IamInstanceProfile"]
                for name, node_type in prepared["available_node_types"].items()}
    profile = "arn:aws:iam::CHANGE-ME-ACCOUNT:instance-profile/"
    assert profiles == {"head": {"Arn": profile + "tuner-head"},
                        "gpu_worker": {"Arn": profile + "tuner-gpu-worker"}}
    trust = json.loads((AWS / "ec2-trust-policy.json").read_text())
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                   "Action": "sts:AssumeRole"}]


def test_workers_read_data_write_runs_and_nothing_else():
    worker = policy("worker-policy.json")
    assert iam_allows(worker, "s3:GetObject", f"{BUCKET}/tuner/data/imaterialist/train/1.jpg")
    assert iam_allows(worker, "s3:ListBucket", BUCKET)
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):  # checkpoints, Ray Tune's results
        assert iam_allows(worker, action, f"{BUCKET}/tuner/runs/furniture-1/trial/checkpoint_000001/x")
    for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
        assert iam_allows(worker, action, IMAGE_REPO)
    assert iam_allows(worker, "ecr:GetAuthorizationToken", "*")
    never = [
        ("s3:PutObject", f"{BUCKET}/tuner/data/imaterialist/train/1.jpg"),  # the data is read-only
        # MLflow's artifacts and the model registry's versions: the head's MLflow server only
        ("s3:GetObject", f"{BUCKET}/tuner/mlflow/1/models/m-1/artifacts/model.pth"),
        ("s3:PutObject", f"{BUCKET}/tuner/mlflow/1/models/m-1/artifacts/model.pth"),
        ("s3:DeleteObject", f"{BUCKET}/tuner/mlflow/1/models/m-1/artifacts/model.pth"),
        ("s3:GetObject", "arn:aws:s3:::another-bucket/x"),
        ("s3:DeleteBucket", BUCKET), ("s3:PutBucketPolicy", BUCKET),
        ("ec2:RunInstances", "*"), ("ec2:TerminateInstances", "*"), ("iam:PassRole", WORKER_ROLE),
        ("ssm:GetParameter", "*"), ("secretsmanager:GetSecretValue", "*"), ("ecr:PutImage", IMAGE_REPO),
    ]
    for action, resource in never:
        assert not iam_allows(worker, action, resource), (action, resource)
    # Never the registry's prefix, even if something else (a bucket policy) grants it: an explicit deny.
    denied = [s for s in worker["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Action"] == "s3:*"
               and s["Resource"] == [f"{BUCKET}/tuner/mlflow", f"{BUCKET}/tuner/mlflow/*"]
               for s in denied), denied
    allowed = [a for s in worker["Statement"] if s["Effect"] == "Allow"
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert not any("*" in action for action in allowed), allowed  # every action named


def test_the_head_starts_and_stops_this_clusters_workers_and_no_more(config):
    head = policy("head-policy.json")
    for action in ("ec2:RunInstances", "ec2:DescribeInstances", "ec2:DescribeInstanceTypes",
                   "ec2:CreateTags", "ec2:TerminateInstances"):
        assert iam_allows(head, action, "arn:aws:ec2:CHANGE-ME-REGION:CHANGE-ME-ACCOUNT:instance/i-0abc")
    assert iam_allows(head, "iam:PassRole", WORKER_ROLE)
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert iam_allows(head, action, f"{BUCKET}/tuner/runs/furniture-1/x")
        assert iam_allows(head, action, f"{BUCKET}/tuner/mlflow/1/models/m-1/artifacts/model.pth")
    assert iam_allows(head, "s3:GetObject", f"{BUCKET}/tuner/data/imaterialist/test/1.jpg")
    never = [
        ("iam:PassRole", "arn:aws:iam::CHANGE-ME-ACCOUNT:role/admin"), ("iam:PassRole", "*"),
        ("iam:CreateRole", "*"), ("iam:AttachRolePolicy", "*"), ("iam:PutRolePolicy", "*"),
        ("ec2:AuthorizeSecurityGroupIngress", "*"), ("ec2:ModifyInstanceAttribute", "*"),
        ("s3:PutObject", f"{BUCKET}/tuner/data/imaterialist/train/1.jpg"),
        ("s3:GetObject", "arn:aws:s3:::another-bucket/x"), ("s3:DeleteBucket", BUCKET),
        ("ssm:GetParameter", "*"), ("secretsmanager:GetSecretValue", "*"),
    ]
    for action, resource in never:
        assert not iam_allows(head, action, resource), (action, resource)
    statements = {s.get("Sid"): s for s in head["Statement"]}
    # It may only terminate (and re-tag) the instances Ray tagged as this cluster's, and hand
    # instances no role but the workers', and only to EC2.
    cluster_tag = {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": config["cluster_name"]}}
    assert statements["TerminateThisClustersNodes"]["Condition"] == cluster_tag
    assert statements["TagThisClustersNodes"]["Condition"] == cluster_tag
    assert statements["PassTheWorkerRoleToEC2"]["Resource"] == WORKER_ROLE
    assert statements["PassTheWorkerRoleToEC2"]["Condition"] == \
        {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    allowed = [a for s in head["Statement"] if s["Effect"] == "Allow"
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert not any("*" in action for action in allowed), allowed


def test_every_node_requires_imdsv2(config):
    from ray.autoscaler._private.docker import docker_start_cmds
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(config)
    for node_type in prepared["available_node_types"].values():
        assert node_type["node_config"]["MetadataOptions"] == {
            "HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}
    # Hop limit 1 still reaches the node's own containers: Ray runs them on the host's network.
    command = docker_start_cmds("ubuntu", prepared["docker"]["image"], {}, "tuner",
                                prepared["docker"]["run_options"], "tuner", "/home/ray", "docker")
    assert "--net=host" in command.split()


def test_mlflow_asks_for_a_password_kept_out_of_the_file(config):
    start = " ".join(config["head_start_ray_commands"])
    server = re.search(r"mlflow server (.*?)(>|$)", start).group(1)
    assert "--app-name basic-auth" in server
    assert "MLFLOW_AUTH_CONFIG_PATH=/home/ray/tuner-state/mlflow/basic_auth.ini" in start
    # Credentials come from the env file the head made (test_no_worker_node_gets_the_mlflow_password),
    # never as literals.
    assert f"set -a; . {MLFLOW_ENV}; set +a;" in start
    assert "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD" in start
    code = [line for line in (ROOT / "cluster.yaml").read_text().splitlines()
            if not line.lstrip().startswith("#")]
    # PASSWORD= followed by a variable, or by the quote that ends the head's generator's string.
    assert not any(re.search(r"PASSWORD=[^$\s']", line) for line in code)
    assert "mlflow[auth]==" in (ROOT / "docker" / "Dockerfile").read_text()


def test_ray_token_auth_stays_on_everywhere(config):
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert "RAY_AUTH_MODE=disabled" not in (ROOT / "cluster.yaml").read_text()
