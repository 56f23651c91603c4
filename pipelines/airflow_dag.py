"""Turn a pipeline's steps into Airflow tasks: what both thin DAG files call at parse time.

Light on purpose: only the Airflow authoring API and the pipelines' step lists are imported here; a task's
work is imported when it runs (`pipelines.airflow_step`).
"""

from __future__ import annotations

from pathlib import Path

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import Asset, BaseOperatorLink, BaseSensorOperator, Param

from pipelines.nightly import Knob, Step, form_config, knob_defaults


class ResultLink(BaseOperatorLink):
    """A button on the task (and in the run's grid) opening a URL that the step's result names; the worker
    reads it when the task ends and Airflow keeps it in XCom, so the API server needs no plugin for it."""

    def __init__(self, name: str, field: str):
        self._name, self.field = name, field

    @property
    def name(self) -> str:
        return self._name

    @property
    def xcom_key(self) -> str:
        return f"_link_{self.field}"

    def get_link(self, operator, *, ti_key) -> str:
        result = ti_key.xcom_pull(task_ids=operator.task_id) or {}
        return result.get(self.field) or ""


class StepOperator(PythonOperator):
    """A step's task with its result's links (`Step.links`) as buttons."""

    def __init__(self, *, links: tuple[tuple[str, str], ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.operator_extra_links = tuple(ResultLink(name, field) for name, field in links)


def run_step(step_name: str, shard: int | None = None, **context) -> dict:
    from pipelines.airflow_step import execute

    return execute(step_name, context, shard)


def plan_shards(step_name: str, **context) -> list[dict]:
    from pipelines.airflow_step import plan_shards

    return plan_shards(step_name, context)


def trigger_params(knobs: dict[str, Knob]) -> dict[str, Param]:
    """The trigger form: `ds` (a date picker) and each knob, showing the value the run will use: the config's,
    read from YAML at parse time. A field left at it, or emptied, keeps the run's config."""
    defaults = knob_defaults(form_config(), knobs)

    def param(name: str, knob: Knob) -> Param:
        extra = {} if not knob.choices else {"items": {"type": "string", "enum": list(knob.choices)}} \
            if knob.type == "array" else {"enum": [*knob.choices, None]}
        return Param(defaults[name], type=[knob.type, "null"], title=name,
                     description=f"{knob.description} Default: the config's {knob.key}.", **extra)

    return {"ds": Param(None, type=["null", "string"], format="date", title="ds",
                        description="Data date to process; empty means the day before the logical date."),
            **{name: param(name, knob) for name, knob in knobs.items()}}


class EventsLandedSensor(BaseSensorOperator):
    """Waits for ds's events partition (`pipelines.airflow_step.events_landed`). Our own sensor rather than the
    standard provider's PythonSensor, whose module puts a deprecation warning at the top of every task's log."""

    def poke(self, context) -> bool:
        from pipelines.airflow_step import events_landed

        return events_landed(context)


def pod_arguments(**context) -> list[str]:
    from pipelines.airflow_step import pod_arguments

    return pod_arguments(context)


def plan_pod_shards(step_name: str, **context) -> list[list[str]]:
    from pipelines.airflow_step import plan_pod_shards

    return plan_pod_shards(step_name, context)


POD_ARGUMENTS = "pod_arguments"  # the task that resolves each run's arguments once for every pod


def add_pod_tasks(steps: tuple[Step, ...], config) -> tuple[dict, dict]:
    """Kubernetes mode (`execution.mode: kubernetes_pod`): each step is a pod of the project image running
    `python -m tasks.<step>`, with its resources from config and the config from a ConfigMap; one small task
    first resolves the run's arguments (ds, run id, the form's knobs), which every pod reads from XCom. A
    sharded step maps one pod per shard. A multi-worker `train_retrieval` is an Indexed Job of
    `retrieval_workers` pods (`retrieval_workers_job`)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from pipelines.airflow_step import POD_CONFIG

    execution = config.execution

    arguments = PythonOperator(task_id=POD_ARGUMENTS, python_callable=pod_arguments)
    volume = k8s.V1Volume(name="recsys-config", config_map=k8s.V1ConfigMapVolumeSource(name=execution.config_map))
    mount = k8s.V1VolumeMount(name="recsys-config", mount_path=str(Path(POD_CONFIG).parent), read_only=True)
    secrets = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=execution.secret))] if execution.secret else []

    def pod(step: Step) -> dict:
        wanted = execution.resources.get(step.name, execution.default_resources)
        limits = {"memory": wanted.memory, **({"nvidia.com/gpu": str(wanted.gpu)} if wanted.gpu else {})}
        return {"task_id": step.name, "name": f"recsys-{step.name.replace('_', '-')}", "image": execution.image,
                "namespace": execution.namespace, "cmds": ["python", "-m", step.module],
                "container_resources": k8s.V1ResourceRequirements(
                    requests={"cpu": wanted.cpu, "memory": wanted.memory}, limits=limits),
                "env_vars": [k8s.V1EnvVar(name="TF_USE_LEGACY_KERAS", value="1"),
                             k8s.V1EnvVar(name="RECSYS_CONFIG", value=POD_CONFIG)],
                "env_from": secrets, "volumes": [volume], "volume_mounts": [mount],
                "outlets": [Asset(name) for name in step.produces], "on_finish_action": "delete_succeeded_pod",
                "get_logs": True}

    tasks, entries = {}, {}
    for step in steps:
        if step.sharded:
            plan = PythonOperator(task_id=f"plan_{step.name}", python_callable=plan_pod_shards,
                                  op_kwargs={"step_name": step.name})
            arguments >> plan
            tasks[step.name] = KubernetesPodOperator.partial(**pod(step)).expand(arguments=plan.output)
            entries[step.name] = plan
        elif step.name == "train_retrieval" and config.train_retrieval.strategy == "multi_worker" \
                and execution.retrieval_workers > 1:
            tasks[step.name] = entries[step.name] = retrieval_workers_job(pod(step), execution, arguments.output)
        else:
            tasks[step.name] = entries[step.name] = KubernetesPodOperator(
                arguments=arguments.output, **pod(step))
    return tasks, entries


WORKERS_LABEL = "recsys/workers"  # the headless Service selects the workers' pods by it


def retrieval_workers_job(pod: dict, execution, arguments):
    """`retrieval_workers` pods of one Indexed Job train the two-tower together: pod i is TensorFlow worker i
    (`tasks.models.distribution.indexed_job_tf_config` builds its TF_CONFIG from the Job's index and the
    headless Service `worker_service`, its subdomain); worker 0 writes the model. The task waits for the Job."""
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
    from kubernetes.client import models as k8s

    workers = execution.retrieval_workers
    env = [k8s.V1EnvVar(name="RECSYS_WORKERS", value=str(workers)),
           k8s.V1EnvVar(name="RECSYS_WORKER_SERVICE", value=execution.worker_service),
           k8s.V1EnvVar(name="RECSYS_WORKER_PORT", value=str(execution.worker_port))]
    template = k8s.V1Job(spec=k8s.V1JobSpec(template=k8s.V1PodTemplateSpec(
        spec=k8s.V1PodSpec(subdomain=execution.worker_service, containers=[]))))
    return KubernetesJobOperator(
        **{**pod, "env_vars": [*pod["env_vars"], *env]}, arguments=arguments, full_job_spec=template,
        labels={WORKERS_LABEL: "train-retrieval"}, completion_mode="Indexed", completions=workers,
        parallelism=workers, backoff_limit=0, wait_until_job_complete=True)


def add_step_tasks(steps: tuple[Step, ...], wait_for_events: bool = False) -> None:
    """One task per step, inside the DAG being defined, wired as the steps say; a sharded step becomes a
    planning task and one dynamically mapped task instance per shard. With `wait_for_events`, a sensor
    (reschedule mode: no worker slot held while it waits) comes first and waits for ds's events to land.
    With `execution.mode: kubernetes_pod` each step runs as a pod instead (`add_pod_tasks`)."""
    config = form_config()
    if config.execution.mode == "kubernetes_pod":
        tasks, entries = add_pod_tasks(steps, config)
        _wire(steps, tasks, entries, wait_for_events)
        return
    tasks, entries = {}, {}
    for step in steps:
        outlets = [Asset(name) for name in step.produces]
        if step.sharded:  # a planning task lists the shards; Airflow maps one task instance per shard
            plan = PythonOperator(task_id=f"plan_{step.name}", python_callable=plan_shards,
                                  op_kwargs={"step_name": step.name})
            tasks[step.name] = PythonOperator.partial(task_id=step.name, python_callable=run_step,
                                                      outlets=outlets).expand(op_kwargs=plan.output)
            entries[step.name] = plan
        else:
            tasks[step.name] = entries[step.name] = StepOperator(
                task_id=step.name, python_callable=run_step, op_kwargs={"step_name": step.name}, outlets=outlets,
                links=step.links)
    _wire(steps, tasks, entries, wait_for_events)


def _wire(steps: tuple[Step, ...], tasks: dict, entries: dict, wait_for_events: bool) -> None:
    """Each step after the ones it follows; the events sensor before the first steps."""
    for step in steps:
        for upstream in step.upstream:
            tasks[upstream] >> entries[step.name]
    if wait_for_events:
        rules = form_config().wait_for_events
        sensor = EventsLandedSensor(task_id="wait_for_events", mode="reschedule",
                                    poke_interval=rules.poke_minutes * 60, timeout=(rules.deadline_hours + 48) * 3600)
        for step in steps:
            if not step.upstream:
                sensor >> entries[step.name]
