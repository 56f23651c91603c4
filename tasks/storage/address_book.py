"""The one place that knows where every artifact of a run lives, from (var dir, ds, run id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from configs.schema import Config

RAW_TABLES = ("events", "items", "users")


@dataclass(frozen=True)
class AddressBook:
    var: Path
    raw: Path

    @classmethod
    def from_config(cls, config: Config) -> AddressBook:
        var = config.paths.var.expanduser().resolve()
        raw = (config.paths.raw or var / "lake" / "raw").expanduser().resolve()
        return cls(var=var, raw=raw)

    @property
    def lake(self) -> Path:
        return self.var / "lake"

    def raw_partition(self, table: str, ds: date) -> Path:
        return self.raw / table / f"ds={ds.isoformat()}"

    def features(self, ds: date) -> Path:
        return self.lake / "features" / f"ds={ds.isoformat()}"

    def models(self, ds: date) -> Path:
        return self.lake / "models" / f"ds={ds.isoformat()}"

    def model(self, ds: date, name: str) -> Path:
        return self.models(ds) / name

    def serving_model(self, ds: date) -> Path:
        """The model served for ds: the gate's winning recipe refit on every day up to ds."""
        return self.models(ds) / "serving"

    def evaluation(self, ds: date) -> Path:
        return self.lake / "evaluation" / f"ds={ds.isoformat()}"

    def recommendations(self, ds: date) -> Path:
        return self.lake / "recommendations" / f"ds={ds.isoformat()}"

    def publish_staging(self, ds: date, run_id: str) -> Path:
        """Where a run's publish shards wait until `publish` commits them all at once."""
        return self.var / "staging" / "recommendations" / f"ds={ds.isoformat()}" / _safe(run_id)

    def reports(self, ds: date, run_id: str, step: str) -> Path:
        return self.var / "reports" / f"ds={ds.isoformat()}" / _safe(run_id) / step

    @property
    def tuned_overlay(self) -> Path:
        """Where `recsys tune` writes its best parameters by default (`tune.overlay` moves it)."""
        return self.var / "tuning" / "tuned.yaml"

    @property
    def warehouse(self) -> Path:
        return self.var / "warehouse.duckdb"

    @property
    def mlflow(self) -> Path:
        return self.var / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    @property
    def airflow_home(self) -> Path:
        return self.var / "airflow"


def _safe(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep them readable but filesystem-safe."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
