"""The sample vocabulary: a fan-out sink hands each sample to every exporter."""

from collector.samples import Family, FanOut, SourceSample
from exporters.prometheus import PrometheusExporter


def test_fan_out_hands_every_sample_and_invalidation_to_each_sink():
    first, second = PrometheusExporter(), PrometheusExporter()
    sink = FanOut(first, second)
    sample = SourceSample("crm", 1.0, 0.1, (Family("fab_backlog_items", "gauge", "Open.", [((), 3.0)]),), ())
    sink.update(sample)
    assert first.latest("crm") is sample
    assert second.latest("crm") is sample
    generations = first.generation, second.generation
    sink.invalidate()
    assert (first.generation, second.generation) == (generations[0] + 1, generations[1] + 1)
