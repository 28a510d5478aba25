"""Every `caffe_ft` action, declared once: its name, help, usage, flags and
the function that runs it. Only the runner of the action that runs is
imported, so this table stays light (no torch, cv2 or numpy); a new action
is one entry here and its function in a runner module."""
from __future__ import annotations

from caffe_ft.cli.flags import Action, Flag, action

_TRAIN = "caffe_ft.cli.train"
_DATA = "caffe_ft.cli.data_tools"
_DEPLOY = "caffe_ft.cli.deploy_tools"
_UPGRADE = "caffe_ft.cli.upgrade_tools"

GPU_FLAG = Flag("gpu", "", "run on these GPU ids, separated by ','; 'all' for every GPU "
                           "(the effective batch size is multiplied by the number of GPUs)")
LEVEL_FLAG = Flag("level", 0, "network level")
STAGE_FLAG = Flag("stage", "", "network stages (not to be confused with phase), separated "
                               "by ','")
ITERATIONS_FLAG = Flag("iterations", 50, "the number of iterations to run")

CONVERT_USAGE = ("[flags] ROOTFOLDER/ LISTFILE DB_NAME\n"
                 "       caffe_ft convert_imageset -from_folders [flags] ROOTFOLDER/ DB_NAME")
_UPGRADE_NET_USAGE = "V0_NET_PROTO_FILE_IN NET_PROTO_FILE_OUT"

# Caffe's `caffe` tool (tools/caffe.cpp).
_CAFFE_TOOL = (
    action("train", "train or finetune a model", f"{_TRAIN}:train_action",
           "-solver solver.prototxt [-weights a.caffemodel[,b.caffemodel] | -snapshot "
           "x.solverstate] [flags]",
           flags=[
               Flag("solver", "", "the solver definition protocol buffer text file"),
               Flag("weights", "", "the pretrained weights to initialize finetuning, "
                                   "separated by ','; cannot be set simultaneously with "
                                   "snapshot"),
               Flag("snapshot", "", "the snapshot solver state to resume training"),
               GPU_FLAG, LEVEL_FLAG, STAGE_FLAG,
               Flag("sigint_effect", "stop", "action to take when a SIGINT signal is "
                                             "received: snapshot, stop or none"),
               Flag("sighup_effect", "snapshot", "action to take when a SIGHUP signal is "
                                                 "received: snapshot, stop or none"),
               Flag("stop_on_nan", False, "stop training at the first iteration whose loss "
                                          "is NaN or infinite (not in Caffe; reads the loss "
                                          "every iteration)"),
               Flag("precision", "fp32", "fp32 (Caffe's float32 results, the default), or "
                                         "a fast mode: tf32, bf16 or fp16 (autocast; "
                                         "channels_last and cudnn.benchmark on GPUs)"),
               Flag("compile", False, "capture the train net's forward with torch.compile "
                                      "(for nets whose shapes never change)"),
           ]),
    action("test", "score a model", f"{_TRAIN}:test_action",
           "-model net.prototxt -weights x.caffemodel [-iterations 50] [flags]",
           flags=[
               Flag("model", "", "the model definition protocol buffer text file"),
               Flag("weights", "", "the trained weights (one file; commas are part of the "
                                   "name)"),
               ITERATIONS_FLAG, GPU_FLAG, LEVEL_FLAG, STAGE_FLAG,
           ]),
    action("time", "benchmark model execution time", f"{_TRAIN}:time_action",
           "-model net.prototxt [-iterations 50] [-phase TRAIN|TEST] [flags]",
           flags=[
               Flag("model", "", "the model definition protocol buffer text file"),
               Flag("phase", "", "network phase (TRAIN or TEST); default TRAIN"),
               ITERATIONS_FLAG, GPU_FLAG, LEVEL_FLAG, STAGE_FLAG,
           ]),
    action("device_query", "show GPU diagnostic information",
           f"{_TRAIN}:device_query_action", "-gpu 0[,1...]|all", flags=[GPU_FLAG]),
)

# Caffe's dataset tools (tools/convert_imageset.cpp, tools/compute_image_mean.cpp).
_DATA_TOOLS = (
    action("convert_imageset", "Convert a set of images to an LMDB of Datums",
           f"{_DATA}:convert_imageset_action", CONVERT_USAGE,
           flags=[
               Flag("gray", False, "treat images as grayscale ones"),
               Flag("shuffle", False, "randomly shuffle the order of images and their labels"),
               Flag("backend", "lmdb", "the backend for storing the result (lmdb only)"),
               Flag("resize_width", 0, "width images are resized to"),
               Flag("resize_height", 0, "height images are resized to"),
               Flag("check_size", False, "check that all the Datums have the same size"),
               Flag("encoded", False, "store the encoded image in the Datum"),
               Flag("encode_type", "", "what type to encode the image as ('png','jpg',...)"),
               Flag("seed", -1, "seed of -shuffle; -1 draws one and logs it"),
               Flag("workers", 0, "image decoding processes; 0 uses every CPU"),
               Flag("from_folders", False,
                    "build from ROOTFOLDER/<class>/<image>; writes DB_NAME_list.txt and "
                    "DB_NAME_labels.txt (labels follow sorted class folder names)"),
           ], nargs=(2, 3)),
    action("compute_image_mean", "Compute the mean image of a database of Datums",
           f"{_DATA}:compute_image_mean_action", "[-backend lmdb] INPUT_DB [OUTPUT_FILE]",
           flags=[Flag("backend", "lmdb", "the backend of the database (lmdb only)")],
           nargs=(1, 2)),
)

# Caffe's upgrade tools (tools/upgrade_*.cpp).
_UPGRADE_TOOLS = (
    action("upgrade_net_proto_text",
           "Upgrade a legacy (V0/V1) net prototxt to the current format",
           f"{_UPGRADE}:upgrade_net_proto_text", _UPGRADE_NET_USAGE, nargs=(2, 2)),
    action("upgrade_net_proto_binary",
           "Upgrade a legacy (V0/V1) .caffemodel to the current format",
           f"{_UPGRADE}:upgrade_net_proto_binary", _UPGRADE_NET_USAGE, nargs=(2, 2)),
    action("upgrade_solver_proto_text", "Upgrade a solver prototxt's solver_type enum to type",
           f"{_UPGRADE}:upgrade_solver_proto_text",
           "OLD_SOLVER_PROTO_FILE_IN SOLVER_PROTO_FILE_OUT", nargs=(2, 2)),
)

# After training: curves of the logs, and using the trained deploy net.
_DEPLOY_TOOLS = (
    action("classify", "Print the top-k classes of images with a deploy net",
           f"{_DEPLOY}:classify_action",
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
           ], nargs=(1, None)),
    action("export", "Export a deploy net and its weights to ONNX or TorchScript",
           f"{_DEPLOY}:export_action",
           "-model deploy.prototxt -weights x.caffemodel -format onnx|torchscript "
           "-output FILE",
           flags=[
               Flag("model", "", "the deploy net definition (Input layers)"),
               Flag("weights", "", "the trained caffemodel"),
               Flag("format", "onnx", "onnx or torchscript"),
               Flag("output", "", "the file to write"),
           ]),
    action("plot", "Draw the training loss and test curves of Caffe logs to a PNG",
           f"{_DEPLOY}:plot_action", "[-output curves.png] LOG...",
           flags=[Flag("output", "curves.png", "the PNG file to write")], nargs=(1, None)),
)

# pycaffe scripts.
_PYTHON = (
    action("python", "Run a pycaffe script unchanged: its `import caffe` gets caffe_ft",
           "caffe_ft.cli.python_tool:python_action", "SCRIPT.py [ARGS...]", nargs=(1, None),
           passthrough=True),
)

ACTIONS: dict[str, Action] = {
    act.name: act for act in (*_CAFFE_TOOL, *_DATA_TOOLS, *_UPGRADE_TOOLS, *_DEPLOY_TOOLS,
                              *_PYTHON)}
