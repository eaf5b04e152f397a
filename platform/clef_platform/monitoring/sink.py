"""The metrics sink: one small interface (inc / set / observe by catalog name) over two backends.

    ray         ray.util.metrics: from a Ray task, actor or Train worker the figures go to the
                node's metrics agent, which whatever scrapes Ray already scrapes (Ray's service-
                discovery file, KubeRay's PodMonitors): no extra target, no port per rank.
    prometheus  a prometheus_client registry of the same catalog names, optionally served on
                loopback (`clef_platform.metrics.MetricsServer`): jobs outside Ray.
    off         nothing (the metrics-off arm of benchmarks/bench_metrics.py).

Ray exports an application metric as `ray_<name>`; the scrape configs (jobs/monitor.py,
infra/k8s/podmonitors.yaml) strip that prefix from `ray_clef_*`, so both backends reach
Prometheus under the catalog's names and one PromQL serves both.

Every call names its labels, and they must be exactly the catalog's: a stray label (a record id)
is a ValueError here, before it can reach a time series.
"""

from __future__ import annotations

from dataclasses import dataclass

from clef_platform.monitoring.catalog import BY_NAME, MetricSpec, build_registry

BACKENDS = ("auto", "ray", "prometheus", "off")


@dataclass
class SinkConfig:
    backend: str = "auto"        # auto: ray inside a Ray process, else prometheus
    port: int | None = None      # prometheus backend: serve on this port (0 = any free one)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"metrics backend {self.backend!r}: expected one of {BACKENDS}")


def _tags(spec: MetricSpec, labels: dict) -> dict[str, str]:
    if set(labels) != set(spec.labels):
        raise ValueError(f"metric {spec.name}: labels {sorted(labels)} given, the catalog's are "
                         f"{sorted(spec.labels)}")
    return {k: str(v) for k, v in labels.items()}


def _spec(name: str, kind: str) -> MetricSpec:
    spec = BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"metric {name}: not in monitoring.catalog")
    if spec.kind != kind:
        raise ValueError(f"metric {name}: is a {spec.kind}, not a {kind}")
    return spec


class Sink:
    backend = "off"

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        _tags(_spec(name, "counter"), labels)

    def set(self, name: str, value: float, **labels) -> None:
        _tags(_spec(name, "gauge"), labels)

    def observe(self, name: str, value: float, **labels) -> None:
        _tags(_spec(name, "histogram"), labels)

    def close(self) -> None:
        pass


class RaySink(Sink):
    """ray.util.metrics objects made on first use (each costs a registration with the agent)."""

    backend = "ray"

    def __init__(self) -> None:
        self._metrics: dict[str, object] = {}

    def _get(self, spec: MetricSpec):
        m = self._metrics.get(spec.name)
        if m is None:
            from ray.util import metrics as rm

            if spec.kind == "counter":
                m = rm.Counter(spec.name, description=spec.help, tag_keys=spec.labels)
            elif spec.kind == "gauge":
                m = rm.Gauge(spec.name, description=spec.help, tag_keys=spec.labels)
            else:
                m = rm.Histogram(spec.name, description=spec.help,
                                 boundaries=list(spec.buckets), tag_keys=spec.labels)
            self._metrics[spec.name] = m
        return m

    def inc(self, name, value=1.0, **labels):
        spec = _spec(name, "counter")
        if value > 0:                  # Ray refuses inc(0); a counter that did not move is fine
            self._get(spec).inc(value, tags=_tags(spec, labels))

    def set(self, name, value, **labels):
        spec = _spec(name, "gauge")
        self._get(spec).set(value, tags=_tags(spec, labels))

    def observe(self, name, value, **labels):
        spec = _spec(name, "histogram")
        self._get(spec).observe(value, tags=_tags(spec, labels))


class PrometheusSink(Sink):
    """The catalog as a prometheus_client registry, served on loopback when a port is given."""

    backend = "prometheus"

    def __init__(self, port: int | None = None) -> None:
        from clef_platform.metrics import MetricsServer

        self.registry, self._metrics = build_registry()
        self.server = MetricsServer(self.registry, port) if port is not None else None

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    def inc(self, name, value=1.0, **labels):
        spec = _spec(name, "counter")
        self._metrics[name].labels(**_tags(spec, labels)).inc(value)

    def set(self, name, value, **labels):
        spec = _spec(name, "gauge")
        self._metrics[name].labels(**_tags(spec, labels)).set(value)

    def observe(self, name, value, **labels):
        spec = _spec(name, "histogram")
        self._metrics[name].labels(**_tags(spec, labels)).observe(value)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def build_sink(cfg: SinkConfig) -> Sink:
    backend = cfg.backend
    if backend == "auto":
        import ray

        backend = "ray" if ray.is_initialized() else "prometheus"
    if backend == "ray":
        return RaySink()
    if backend == "prometheus":
        return PrometheusSink(cfg.port)
    return Sink()
