"""Kubernetes mode (`execution.mode: kubernetes_pod`): each step is a pod of the project image. No cluster exists
here: each pod is rendered with the operator's own `dry_run` and checked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from pipelines.nightly import DAG_ID, STEPS
from tests.conftest import REPO

POD_SETTINGS = {"mode": "kubernetes_pod", "image": "registry.example/recsys-nightly:1.2.3", "namespace": "shop",
                "resources": {"train_retrieval": {"cpu": "4", "memory": "16Gi", "gpu": 1}}}


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path_factory.mktemp("k8s") / "config.yaml"
    config.write_text(yaml.safe_dump({"base": str(REPO / "configs" / "default.yaml"), "execution": POD_SETTINGS}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECSYS_CONFIG", str(config))
        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        yield bag.dags[DAG_ID]


def run_context(**params) -> dict:
    return {"params": {"ds": None, **params}, "logical_date": datetime(2026, 11, 23, 2, tzinfo=UTC),
            "run_id": "scheduled__2026-11-23T02:00:00+00:00"}


def dry_run(task, capsys) -> dict:
    """The pod the operator's own dry run prints (after its log line)."""
    task.dry_run()
    printed = capsys.readouterr().out
    return yaml.safe_load(printed[printed.index("api_version:"):])


def test_every_step_is_a_pod_of_the_image_running_its_module_after_the_runs_arguments(dag):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    for step in STEPS:
        task = dag.get_task(step.name)
        if step.sharded:  # a planning task lists the shards' arguments; one pod is mapped per shard
            entry, settings = dag.get_task(f"plan_{step.name}"), task.partial_kwargs
            assert task.operator_class is KubernetesPodOperator and entry.task_id in task.upstream_task_ids
        else:
            entry, settings = task, vars(task)
            assert isinstance(task, KubernetesPodOperator)
        assert settings["image"] == POD_SETTINGS["image"] and settings["namespace"] == "shop"
        assert settings["cmds"] == ["python", "-m", f"tasks.{step.name}"]
        assert {"pod_arguments", *step.upstream} <= entry.upstream_task_ids


def test_a_pod_renders_with_its_resources_config_map_secret_and_the_runs_arguments(dag, capsys):
    from pipelines.airflow_step import POD_CONFIG, pod_arguments

    task = dag.get_task("train_retrieval")
    task.arguments = pod_arguments(run_context(k=7))  # what the pod_arguments task hands it at run time
    pod = dry_run(task, capsys)

    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["namespace"] == "shop" and container["image"] == POD_SETTINGS["image"]
    assert container["command"] == ["python", "-m", "tasks.train_retrieval"]
    assert container["args"] == ["--ds", "2026-11-22", "--run-id", "scheduled__2026-11-23T02:00:00+00:00",
                                 "--config", POD_CONFIG, "--set", "publish.k=7"]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"},
                                      "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"}}
    assert {e["name"]: e["value"] for e in container["env"]} == {"TF_USE_LEGACY_KERAS": "1", "RECSYS_CONFIG": POD_CONFIG}
    assert container["env_from"] == [{"secret_ref": {"name": "recsys-secrets"}}]
    assert container["volume_mounts"] == [{"mount_path": "/etc/recsys", "name": "recsys-config", "read_only": True}]
    assert pod["spec"]["volumes"] == [{"config_map": {"name": "recsys-config"}, "name": "recsys-config"}]


def test_a_step_without_resources_of_its_own_gets_the_default_and_no_gpu(dag, capsys):
    from pipelines.airflow_step import pod_arguments

    task = dag.get_task("validate_raw")
    task.arguments = pod_arguments(run_context())
    container = dry_run(task, capsys)["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert "--set" not in container["args"]  # nothing changed in the form


def test_publish_shard_maps_one_pod_per_shard(monkeypatch, tmp_path):
    from pipelines.airflow_step import plan_pod_shards

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    planned = plan_pod_shards("publish_shard", run_context(publish_shards=3))
    assert [args[args.index("--shard") + 1] for args in planned] == ["0", "1", "2"]
    assert all(args[:2] == ["--ds", "2026-11-22"] and "publish.shards=3" in args for args in planned)


def test_the_manifests_give_the_pods_their_namespace_config_map_and_permission(tmp_path):
    from configs import load_config

    execution = load_config(None).execution
    documents = list(yaml.safe_load_all((REPO / "docker" / "kubernetes" / "recsys.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents}
    assert by_kind["Namespace"]["metadata"]["name"] == execution.namespace
    assert by_kind["ConfigMap"]["metadata"]["name"] == execution.config_map
    shipped = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])
    assert shipped.pop("base") == "/app/configs/default.yaml"  # where the image keeps the shipped configs
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"base": str(REPO / "configs" / "default.yaml"), **shipped}))
    assert load_config(tmp_path / "config.yaml").execution.mode == "kubernetes_pod"
    for resource in ("pods", "jobs"):
        allowed = {verb for rule in by_kind["Role"]["rules"] if resource in rule["resources"] for verb in rule["verbs"]}
        assert {"create", "get", "delete"} <= allowed
    service = by_kind["Service"]  # the multi-worker Job's pods, named through the headless Service
    assert service["metadata"]["name"] == execution.worker_service and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"recsys/workers": "train-retrieval"}
    assert service["spec"]["ports"][0]["port"] == execution.worker_port
    values = yaml.safe_load((REPO / "docker" / "kubernetes" / "airflow-values.yaml").read_text())
    assert values["executor"] == "CeleryExecutor"
    assert {"name": "RECSYS_CONFIG", "value": "/etc/recsys/config.yaml"} in values["env"]


def test_multi_worker_retrieval_is_an_indexed_job_whose_pods_find_each_other(tmp_path, monkeypatch):
    """train_retrieval.strategy=multi_worker with 3 retrieval_workers: one Indexed Job of 3 pods, rendered with
    the operator's own `build_job_request_obj` (no cluster here); each pod's TF_CONFIG follows from its index."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator

    from pipelines.airflow_step import pod_arguments
    from tasks.models.distribution import indexed_job_tf_config

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"base": str(REPO / "configs" / "default.yaml"),
                                      "execution": {**POD_SETTINGS, "retrieval_workers": 3},
                                      "train_retrieval": {"strategy": "multi_worker"}}))
    monkeypatch.setenv("RECSYS_CONFIG", str(config))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    task = bag.dags[DAG_ID].get_task("train_retrieval")
    assert isinstance(task, KubernetesJobOperator) and task.wait_until_job_complete
    task.arguments = pod_arguments(run_context())
    # The Job operator has no dry run; it only asks a kubeconfig whether it runs in a cluster. A file naming an
    # unreachable server answers that without any call.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "none", "user": {"token": "none"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}]}))
    task.config_file = str(kubeconfig)
    job = task.build_job_request_obj().to_dict()

    assert job["metadata"]["namespace"] == "shop"
    spec = job["spec"]
    assert (spec["completion_mode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]
    assert pod["spec"]["subdomain"] == "recsys-workers"
    assert pod["metadata"]["labels"]["recsys/workers"] == "train-retrieval"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "tasks.train_retrieval"] and container["args"][:2] == ["--ds",
                                                                                                           "2026-11-22"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RECSYS_WORKERS"] == "3" and env["RECSYS_WORKER_SERVICE"] == "recsys-workers"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # train_retrieval's own resources

    # What pod 2 of that Job (named <job>-2 by Kubernetes) hands TensorFlow:
    name = job["metadata"]["name"]
    derived = indexed_job_tf_config({**env, "JOB_COMPLETION_INDEX": "2", "HOSTNAME": f"{name}-2"})
    assert derived == {"cluster": {"worker": [f"{name}-{i}.recsys-workers:2222" for i in range(3)]},
                       "task": {"type": "worker", "index": 2}}
    assert indexed_job_tf_config({"HOSTNAME": "a-pod"}) is None  # any other pod trains alone
