"""Typed configuration of the nightly pipeline: one frozen, strict model per step."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def without_password(url: str | None) -> str | None:
    """`url` with the password of its user part removed (scheme://user@host...), else unchanged."""
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, at, location = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}{at}{location}" if at else url


class Section(BaseModel):
    """Base of every config section: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class PathsConfig(Section):
    var: Path = Path("var")
    raw: Path | None = Field(None, description="Landing zone; defaults to <var>/lake/raw.")


class ValueRule(Section):
    """What the values of a declared numeric column must be. Missing values (null, NaN) pass unless `not_null`."""

    min: float | None = Field(None, description="Smallest allowed value (inclusive).")
    max: float | None = Field(None, description="Largest allowed value (inclusive).")
    finite: bool = Field(True, description="No infinite values.")
    not_null: bool = Field(False, description="No missing values.")

    def bounds(self) -> str:
        """The bounds in words, e.g. "min 0" or "min 1, max 5" (empty without bounds)."""
        return ", ".join(f"{name} {value:g}" for name, value in (("min", self.min), ("max", self.max))
                         if value is not None)


class FeatureColumns(Section):
    """Declared feature columns of a raw snapshot table (items or users), with the value rules of the numeric
    ones (a numeric column without a rule must still be finite)."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rules: dict[str, ValueRule] = Field(default_factory=dict, description="Value rules by numeric column; YAML "
                                                                          "usually gives them in `numeric`.")

    @model_validator(mode="before")
    @classmethod
    def _numeric_with_rules(cls, data):
        """`numeric` may map each column to its rule (`numeric: {price: {min: 0}}`), so that a config declaring
        other numeric columns replaces the rules with the columns."""
        if isinstance(data, dict) and isinstance(data.get("numeric"), dict):
            declared = data["numeric"]
            data = {**data, "numeric": tuple(declared),
                    "rules": {**{c: r or {} for c, r in declared.items()}, **(data.get("rules") or {})}}
        return data

    @model_validator(mode="after")
    def _rules_name_numeric_columns(self) -> FeatureColumns:
        unknown = sorted(set(self.rules) - set(self.numeric))
        if unknown:
            raise ValueError(f"rules for {unknown}: value rules apply to declared numeric columns only "
                             f"(numeric: {list(self.numeric)})")
        return self

    @property
    def all(self) -> tuple[str, ...]:
        return self.categorical + self.numeric + self.text + self.tags

    def rule(self, column: str) -> ValueRule:
        return self.rules.get(column, ValueRule())


class DataConfig(Section):
    """The raw data contract: event types with their weights, and declared features."""

    event_weights: dict[str, float] = {
        "view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 1.0,
    }
    rating_scales_weight: bool = Field(
        True, description="A rating event's weight is multiplied by its value.")
    items: FeatureColumns = FeatureColumns(
        categorical=("category", "brand"), numeric=("price",), text=("title",), tags=("tags",),
        rules={"price": ValueRule(min=0, not_null=True)})
    users: FeatureColumns = FeatureColumns(categorical=("country", "age_band"))

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(self.event_weights)


class WaitForEventsConfig(Section):
    """How a scheduled run waits for its ds's events to land before it validates them (Airflow only)."""

    marker: str | None = Field("_SUCCESS", description="File the landing job writes into the events partition "
                                                        "when it is complete; None: any data file will do.")
    deadline_hours: float = Field(20.0, ge=0, description="Hours after the end of ds (UTC) to wait before failing.")
    poke_minutes: float = Field(10.0, gt=0, description="Minutes between looks; the worker slot is free between.")


class ValidateRawConfig(Section):
    unknown_item_tolerance: float = Field(0.01, ge=0, le=1)
    unknown_user_tolerance: float = Field(0.01, ge=0, le=1)
    row_count_trailing_days: int = Field(7, ge=1)
    row_count_tolerance: float = Field(
        0.5, ge=0, description="Allowed relative deviation of the day's event count from the trailing mean.")


class BuildFeaturesConfig(Section):
    lookback_days: int = Field(28, ge=2, description="Days of events read, ending at ds.")
    holdout_days: int = Field(3, ge=1, description="The last days of the lookback, held out for evaluation.")
    history_length: int = Field(50, ge=1, description="Most recent items kept per user as history.")

    @model_validator(mode="after")
    def _holdout_inside_lookback(self) -> BuildFeaturesConfig:
        if self.holdout_days >= self.lookback_days:
            raise ValueError(
                f"holdout_days ({self.holdout_days}) must be smaller than lookback_days ({self.lookback_days})")
        return self


class PopularityConfig(Section):
    half_life_days: float = Field(7.0, gt=0, description="Time decay of an interaction's weight.")


class CooccurrenceConfig(Section):
    neighbours: int = Field(100, ge=1, description="Most similar items kept per item.")
    shrinkage: float = Field(10.0, ge=0, description="Damps similarities resting on few shared users.")


class EaseConfig(Section):
    l2: float = Field(200.0, gt=0, description="L2 penalty added to the item Gram matrix's diagonal.")
    max_items: int = Field(
        20_000, ge=1, description="Most interacted items EASE is fit on; above it the kind is skipped, with a log "
                                  "line giving the memory it would need (4 bytes x items^2).")


ModelKind = Literal["popularity", "cooccurrence", "ease", "recent"]  # fitted by `train`; the TFRS models have steps of their own


class TrainConfig(Section):
    models: tuple[ModelKind, ...] = ("popularity", "cooccurrence", "ease")
    popularity: PopularityConfig = PopularityConfig()
    cooccurrence: CooccurrenceConfig = CooccurrenceConfig()
    ease: EaseConfig = EaseConfig()


class TrainRetrievalConfig(Section):
    """The TFRS two-tower retrieval model."""

    enabled: bool = True
    embedding_dim: int = Field(32, ge=4)
    history_length: int = Field(20, ge=1, description="Items before each event that the user tower pools.")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=8)
    learning_rate: float = Field(0.03, gt=0)
    temperature: float = Field(0.05, gt=0, description="Softmax temperature of the in-batch loss.")
    extra_negatives: int = Field(
        0, ge=0, description="Items drawn uniformly from the catalogue per batch as extra negatives for every "
                             "query (mixed negative sampling), so rarely bought items are pushed down too.")
    normalize: bool = Field(True, description="L2-normalise both towers' outputs (cosine scores).")
    user_id_embedding: bool = Field(
        False, description="Give each known user a free embedding besides features and history (overfits here).")
    validation_days: int = Field(1, ge=1, description="Last training days used for early stopping.")
    patience: int = Field(
        1, ge=1, description="Epochs without a lower val_loss before training stops; the best epoch's weights are "
                             "kept. 1: every fit measured (the L bench's, the real data's) worsened steadily after "
                             "its best epoch, so a second epoch of patience kept the same weights and cost an epoch.")
    strategy: Literal["single", "mirrored", "multi_worker"] = Field(
        "single", description="single: this process; mirrored: every local GPU; multi_worker: the workers TF_CONFIG "
                              "names (one `python -m tasks.train_retrieval` each; worker 0 writes the model). "
                              "In-batch negatives are gathered across replicas, so the softmax sees the global batch.")


SourceKind = Literal["popularity", "cooccurrence", "ease", "two_tower", "recent"]


class TrainRankingConfig(Section):
    """The two-stage model: several retrievers propose candidates, a TFRS DCN-v2 ranker orders their union."""

    enabled: bool = True
    sources: tuple[SourceKind, ...] = Field(
        ("cooccurrence", "ease", "two_tower", "popularity"), min_length=1,
        description="Retrievers whose candidates are pooled; each is fit with its own config section.")
    per_source: int = Field(100, ge=1, description="Candidates each source proposes per user.")
    candidates: int = Field(300, ge=1, description="Candidates per user after pooling, best rank in any source first.")
    label_days: int = Field(3, ge=1, description="Days of one label window: their events label the ranker's lists, "
                                                 "whose sources are fit on the days before them.")
    label_windows: int = Field(1, ge=1, description="Consecutive label windows, back from the cutoff, whose lists "
                                                    "are pooled (more lists, one more fit of the sources each).")
    positive_event_types: tuple[str, ...] = Field(
        ("click", "add_to_cart", "purchase", "rating"), min_length=1,
        description="Events in the label window that make a candidate a positive, weighted by their event weight.")
    deep_layers: tuple[int, ...] = (64, 32)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1, description="Users' candidate lists per training step.")
    learning_rate: float = Field(0.003, gt=0)
    patience: int = Field(3, ge=1)
    validation_share: float = Field(0.1, gt=0, lt=1, description="Users whose lists drive early stopping.")
    max_lists: int = Field(20_000, ge=2, description="Most users' lists the ranker trains on, per label window "
                                                      "and in all (a seeded sample).")


class EvaluateConfig(Section):
    ks: tuple[int, ...] = (10, 50, 100)
    positive_event_types: tuple[str, ...] = ("add_to_cart", "purchase")
    baseline: ModelKind = "popularity"
    batch_size: int = Field(1024, ge=1)


class RefitConfig(Section):
    mode: Literal["refit", "warm_start"] = Field(
        "refit", description="How the gate's winning recipe is brought up to ds: `refit` trains it anew on every "
                             "day up to ds; `warm_start` trains its twin's TFRS parts on over the held-out days "
                             "only (the baselines are refit either way). `python -m benchmarks.serve_fresh` "
                             "measures both on the days after ds.")


class RegisterConfig(Section):
    tracking_uri: str | None = Field(None, description="Defaults to SQLite under <var>/mlflow.")
    experiment: str = "recsys_nightly"
    model_name: str = "recsys_recommender"
    primary_metric: str = "ndcg_at_10"
    margin: float = Field(0.0, ge=0, description="Relative gain over the champion that the lower bound of the "
                                                 "gain's confidence interval must clear to promote.")
    confidence: float = Field(0.9, gt=0, lt=1, description="Level of the paired bootstrap interval of the gain "
                                                           "(0.9: promote when its 5% quantile clears the margin).")
    bootstrap_resamples: int = Field(2000, ge=100, description="Resamples of the held-out users.")
    min_users: int = Field(50, ge=1, description="Held-out users below which nothing is promoted: no evidence.")
    guard_metrics: tuple[str, ...] = ("recall_at_100", "hit_rate_at_10")
    guard_tolerance: float = Field(0.05, ge=0, description="Relative drop of a guard metric that blocks promotion.")
    http_retries: int = Field(2, ge=0, description="Retries of a call to an MLflow server before the step fails.")
    http_timeout_s: float = Field(5.0, gt=0, description="Seconds an MLflow server has to answer one call.")


class PublishConfig(Section):
    k: int = Field(100, ge=1)
    exclude_event_types: tuple[str, ...] = ("purchase",)
    only_available: bool = True
    batch_size: int = Field(2048, ge=1)
    shards: int = Field(2, ge=1, description="User shards scored in parallel (Airflow maps one task per shard); "
                                             "the table changes only when all have succeeded.")
    shard_threads: int | None = Field(None, ge=1, description="Threads each publish_shard process computes on. "
                                      "None: in a pod (execution.mode kubernetes_pod), the CPUs its pod asks for; "
                                      "else its share of the host's cores, cores // shards (at least 1), as Airflow "
                                      "runs the shards side by side.")
    warehouse: Path | None = Field(None, description="DuckDB file; defaults to <var>/warehouse.duckdb.")


class PodResources(Section):
    """What one step's pod asks of Kubernetes."""

    cpu: str = Field("1", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request (Kubernetes quantity: 1, 2.5, "
                                                                          "500m).")
    memory: str = Field("2Gi", description="Memory request and limit (Kubernetes quantity: 2Gi).")
    gpu: int = Field(0, ge=0, description="GPUs (nvidia.com/gpu) requested and limited; 0: none.")

    @property
    def whole_cpus(self) -> int:
        """The CPU request in whole CPUs, at least one: 500m is 1, 2500m is 3."""
        amount = float(self.cpu[:-1]) / 1000 if self.cpu.endswith("m") else float(self.cpu)
        return max(1, math.ceil(amount))


class ExecutionConfig(Section):
    """How Airflow runs the steps: in its own workers (local) or each as a Kubernetes pod of the project image."""

    mode: Literal["local", "kubernetes_pod"] = "local"
    image: str = Field("recsys-nightly:latest", description="Image of docker/Dockerfile, as the cluster pulls it.")
    namespace: str = "recsys"
    config_map: str = Field("recsys-config", description="ConfigMap whose key config.yaml is the pipeline config; "
                                                         "mounted at /etc/recsys in every pod.")
    secret: str | None = Field("recsys-secrets", description="Secret whose keys become the pods' environment "
                                                             "(PGPASSWORD, MLFLOW_TRACKING_PASSWORD...); null: none.")
    default_resources: PodResources = PodResources()
    resources: dict[str, PodResources] = Field(default_factory=dict, description="Per step name, replacing the "
                                                                                  "default (train_retrieval: a GPU).")
    retrieval_workers: int = Field(
        1, ge=1, description="Pods that train the two-tower together, one TensorFlow worker each (a Kubernetes "
                             "Indexed Job), when train_retrieval.strategy is multi_worker; 1: one pod.")
    worker_service: str = Field("recsys-workers", description="Headless Service whose DNS names the workers' pods "
                                                              "(docker/kubernetes/recsys.yaml).")
    worker_port: int = Field(2222, ge=1, le=65535, description="Port the TensorFlow workers talk on.")


class WarehouseConfig(Section):
    """Where the nightly tables live: the embedded DuckDB file by default, or a PostgreSQL database."""

    url: str | None = Field(None, description="postgresql://user@host:port/db for PostgreSQL (its password from "
                                              "PGPASSWORD or ~/.pgpass, not this file); null: the "
                                              "DuckDB file (`publish.warehouse`, else <var>/warehouse.duckdb), "
                                              "unless the Airflow Connection `recsys_warehouse` exists.")

    @model_validator(mode="after")
    def _known_scheme(self) -> WarehouseConfig:
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"warehouse.url must be a postgresql:// URL (or null for DuckDB), not {self.url!r}")
        return self


class TuneConfig(Section):
    """`recsys tune` and the weekly `recsys_tune` DAG: Optuna's TPE over the two-tower and ranker knobs."""

    trials: int = Field(20, ge=1, description="Most trials a tuning run makes.")
    minutes: float = Field(60.0, gt=0, description="Wall-clock budget of a tuning run; it stops after the trial "
                                                  "running when the budget ends.")
    overlay: Path | None = Field(None, description="Where the best parameters are written as a config overlay "
                                                   "(`base:` the tuned config); defaults to <var>/tuning/tuned.yaml.")


class ReportConfig(Section):
    """The nightly report, and where the Airflow run links to it (its `report` task's extra links)."""

    app_url: str | None = Field("http://127.0.0.1:8501", description="Base URL of the user page (`make app`), "
                                                                    "which serves the reports; null: no link.")
    mlflow_ui_url: str | None = Field(None, description="Base URL of the MLflow UI, for the link to the night's "
                                                        "run; null: the tracking URI when it is an http(s) server, "
                                                        "else http://127.0.0.1:5000 (`make mlflow`).")


# The `register` section shares its name with ABCMeta.register, which no config object ever calls.
warnings.filterwarnings("ignore", message='Field name "register" in "Config" shadows', category=UserWarning)


class SparkConfig(Section):
    """Where `engine: spark` runs: a local Spark in the step's process, or a Spark Connect server."""

    master: str = Field("local[2]", description="Spark master of the in-process session (local[N]: N cores).")
    remote: str | None = Field(None, description="Spark Connect URL (sc://host:15002); set, it replaces `master`.")
    driver_memory: str = Field("2g", description="Memory of the in-process driver (JVM quantity: 2g).")
    shuffle_partitions: int = Field(8, ge=1, description="Partitions of each shuffle (group-by, join, sort).")


class Config(Section):
    """The whole pipeline's configuration, validated once at the edge."""

    seed: int = 42
    engine: Literal["pandas", "spark"] = Field(
        "pandas", description="What runs validate_raw's checks, computes build_features' tables and scores "
                              "publish_shard's users: pandas in the step's process (one task per shard), or Spark "
                              "(`spark` section: one task, one job over every shard), with the same Great "
                              "Expectations suites, rules and files.")
    spark: SparkConfig = SparkConfig()
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    wait_for_events: WaitForEventsConfig = WaitForEventsConfig()
    validate_raw: ValidateRawConfig = ValidateRawConfig()
    build_features: BuildFeaturesConfig = BuildFeaturesConfig()
    train: TrainConfig = TrainConfig()
    train_retrieval: TrainRetrievalConfig = TrainRetrievalConfig()
    train_ranking: TrainRankingConfig = TrainRankingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    refit: RefitConfig = RefitConfig()
    register: RegisterConfig = RegisterConfig()
    publish: PublishConfig = PublishConfig()
    report: ReportConfig = ReportConfig()
    warehouse: WarehouseConfig = WarehouseConfig()
    execution: ExecutionConfig = ExecutionConfig()
    tune: TuneConfig = TuneConfig()
    config_file: str | None = Field(None, description="The file this config was read from (set by the loader, "
                                                      "logged with every run; a tuned overlay names itself here).")

    def for_logging(self) -> dict:
        """The config as JSON-ready data with the password of any URL in it removed: what MLflow records."""
        resolved = self.model_dump(mode="json")
        for section, key in (("warehouse", "url"), ("register", "tracking_uri")):
            resolved[section][key] = without_password(resolved[section][key])
        return resolved

    @model_validator(mode="after")
    def _event_types_known(self) -> Config:
        known = set(self.data.event_types)
        for section, types in (("evaluate.positive_event_types", self.evaluate.positive_event_types),
                               ("train_ranking.positive_event_types", self.train_ranking.positive_event_types),
                               ("publish.exclude_event_types", self.publish.exclude_event_types)):
            unknown = sorted(set(types) - known)
            if unknown:
                raise ValueError(f"{section} names event types {unknown} not in data.event_weights {sorted(known)}")
        return self
