"""After training: `caffe_ft plot` (training curves of logs), `caffe_ft classify`
and `caffe_ft export` (using the trained deploy net)."""
from __future__ import annotations

from typing import Any

from caffe_ft.cli import Flag, action
from caffe_ft.log import setup_logging


@action("classify", "Print the top-k classes of images with a deploy net",
        "-model deploy.prototxt -weights x.caffemodel [flags] IMAGE...",
        flags=[
            Flag("model", "", "the deploy net definition (Input layer)"),
            Flag("weights", "", "the trained caffemodel"),
            Flag("mean", "", "mean file (.binaryproto) subtracted from each image"),
            Flag("mean_value", "", "per-channel mean instead, e.g. 104,117,123 (B,G,R)"),
            Flag("scale", 1.0, "factor applied after the mean, as transform_param's scale"),
            Flag("labels", "", "file with one label per output class"),
            Flag("top_k", 5, "how many classes to print per image"),
            Flag("blob", "", "the output blob to report (default: the net's only output)"),
            Flag("gpu", "", "GPU device id to run on ('all': the first); none: the CPU"),
        ], nargs=(1, None))
def classify_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.classify import Classifier, format_predictions
    from caffe_ft.cli.train import device_for, gpu_ids
    from caffe_ft.errors import UsageError
    for name in ("model", "weights"):
        if not flags[name]:
            raise UsageError(f"Need -{name} to classify")
    setup_logging()
    classifier = Classifier(flags["model"], flags["weights"], mean_file=flags["mean"],
                            mean_value=flags["mean_value"], scale=flags["scale"],
                            labels_file=flags["labels"], output=flags["blob"],
                            device=device_for(gpu_ids(flags["gpu"])[:1]))
    for path, predictions in zip(args, classifier.classify(args, flags["top_k"])):
        print(format_predictions(path, predictions))
    return 0


@action("export", "Export a deploy net and its weights to ONNX or TorchScript",
        "-model deploy.prototxt -weights x.caffemodel -format onnx|torchscript -output FILE",
        flags=[
            Flag("model", "", "the deploy net definition (Input layers)"),
            Flag("weights", "", "the trained caffemodel"),
            Flag("format", "onnx", "onnx or torchscript"),
            Flag("output", "", "the file to write"),
        ])
def export_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.errors import UsageError
    from caffe_ft.export import export
    for name in ("model", "weights", "output"):
        if not flags[name]:
            raise UsageError(f"Need -{name} to export")
    setup_logging()
    graph = export(flags["model"], flags["weights"], flags["format"], flags["output"])
    print(f"Wrote {flags['output']} ({flags['format']}): inputs "
          f"{', '.join(graph.input_names)}; outputs {', '.join(graph.output_names)}")
    return 0


@action("plot", "Draw the training loss and test curves of Caffe logs to a PNG",
        "[-output curves.png] LOG...",
        flags=[Flag("output", "curves.png", "the PNG file to write")], nargs=(1, None))
def plot_action(flags: dict[str, Any], args: list[str]) -> int:
    from caffe_ft.plot import plot_logs
    plot_logs(args, flags["output"])
    print(f"Wrote {flags['output']}")
    return 0
