"""Runs what comes after training (declared with their flags in
caffe_ft.cli.actions): `caffe_ft plot` (training curves of logs), `caffe_ft
classify` and `caffe_ft export` (using the trained deploy net). Each imports
what it needs itself, so `plot` does not pay for torch."""
from __future__ import annotations

from typing import Any

from caffe_ft.errors import UsageError
from caffe_ft.glog import setup_logging


def _require(flags: dict[str, Any], names: tuple[str, ...], purpose: str) -> None:
    for name in names:
        if not flags[name]:
            raise UsageError(f"Need -{name} to {purpose}")


def classify_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.classify import Classifier, format_predictions
    from caffe_ft.cli.devices import device_for, gpu_ids
    _require(flags, ("model", "weights"), "classify")
    setup_logging()
    classifier = Classifier(flags["model"], flags["weights"], mean_file=flags["mean"],
                            mean_value=flags["mean_value"], scale=flags["scale"],
                            labels_file=flags["labels"], output=flags["blob"],
                            device=device_for(gpu_ids(flags["gpu"])[:1]))
    for path, predictions in zip(args, classifier.classify(args, flags["top_k"])):
        print(format_predictions(path, predictions))
    return 0


def export_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.export import export
    _require(flags, ("model", "weights", "output"), "export")
    setup_logging()
    graph = export(flags["model"], flags["weights"], flags["format"], flags["output"])
    print(f"Wrote {flags['output']} ({flags['format']}): inputs "
          f"{', '.join(graph.input_names)}; outputs {', '.join(graph.output_names)}")
    return 0


def plot_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.plot import plot_logs
    plot_logs(args, flags["output"])
    print(f"Wrote {flags['output']}")
    return 0
