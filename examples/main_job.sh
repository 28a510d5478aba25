#!/usr/bin/env bash
# The main job: Caffe's fine-tuning recipe end to end on the bundled digits,
# with caffe_ft's Caffe-style tools only.
#
#   (a) LMDBs from folders of class folders      caffe_ft convert_imageset -from_folders
#   (b) the mean image                           caffe_ft compute_image_mean
#   (c) a base LeNet trained on the digits 0-4   caffe_ft train
#   (d) fine-tuned on a few images of 5-9, with the classifier renamed
#       (ip2 -> ip2_ft, lr_mult 10/20) and conv1 frozen (lr_mult 0)
#                                                caffe_ft train -weights base_iter_100.caffemodel
#   (e) the same net and solver from scratch     caffe_ft train
#   (f) both scored on the held-out 5-9 images   caffe_ft test
#   (g) snapshots and a training-curve PNG       caffe_ft plot
#   (h) one test image classified                caffe_ft classify
#
# Usage: bash examples/main_job.sh [OUTPUT_FOLDER]
#        (default: $CAFFE_FT_OUT/main_job, or out/main_job in the current folder)
# Environment: PER_CLASS (fine-tuning images per digit, default 5),
#              PYTHON (default python3).
# The output folder is made fresh: it holds the recipe files used, the
# databases, the logs and everything they produced. The recipes' paths are
# relative to it, so every command below runs inside it.
set -euo pipefail

EXAMPLES="$(cd "$(dirname "$0")" && pwd)"
RECIPE="$EXAMPLES/lenet_digits"
DATA="$RECIPE/data"
OUT="${1:-${CAFFE_FT_OUT:-out}/main_job}"
PER_CLASS="${PER_CLASS:-5}"
PY="${PYTHON:-python3}"
MARK=".caffe_ft_main_job"  # marks a folder this script made, so a rerun may replace it

caffe_ft() { "$PY" -m caffe_ft "$@"; }
step() { printf '\n== %s\n' "$*"; }
max_iter() { sed -n 's/^max_iter: *//p' "$1"; }
# The last accuracy a log reports: `caffe_ft test`'s summary or a solver test pass.
accuracy() { sed -n 's/.*[]:] accuracy = //p' "$1" | tail -n 1; }

START=$SECONDS
if ! [[ "$PER_CLASS" =~ ^[0-9]+$ ]] || [ "$PER_CLASS" -lt 1 ] || [ "$PER_CLASS" -gt 79 ]; then
    echo "main_job.sh: PER_CLASS=$PER_CLASS: give 1 to 79 (the fewest training images of a digit)" >&2
    exit 2
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -e "$OUT/$MARK" ]; then
    echo "main_job.sh: $OUT exists and was not made by this script; give another folder" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$OUT/$MARK"
cp "$RECIPE"/*.prototxt "$OUT"
cd "$OUT"
mkdir logs

step "(a) LMDBs from the bundled PNGs: base = digits 0-4, transfer = 5-9 ($PER_CLASS train images each)"
# One folder of class folders per database; -from_folders labels the classes
# 0.. in sorted folder order and writes <db>_labels.txt with their names.
for digit in 0 1 2 3 4; do
    mkdir -p "sets/base_train/$digit" "sets/base_test/$digit"
    cp "$DATA/train/$digit"/*.png "sets/base_train/$digit/"
    cp "$DATA/test/$digit"/*.png "sets/base_test/$digit/"
done
# The small fine-tuning set takes every k-th image of a digit: the files are in
# the data set's order, which follows its writers, so this spreads them.
for digit in 5 6 7 8 9; do
    mkdir -p "sets/transfer_train/$digit" "sets/transfer_test/$digit"
    images=("$DATA/train/$digit"/*.png)
    every=$(( ${#images[@]} / PER_CLASS ))
    for (( i = 0; i < PER_CLASS; i++ )); do
        cp "${images[i * every]}" "sets/transfer_train/$digit/"
    done
    cp "$DATA/test/$digit"/*.png "sets/transfer_test/$digit/"
done
# -workers 1: a few hundred 28x28 PNGs decode faster than a process pool starts.
for db in base_train base_test transfer_train transfer_test; do
    caffe_ft convert_imageset -from_folders -gray -shuffle -seed 1 -workers 1 \
        "sets/$db/" "${db}_lmdb" 2> "logs/convert_$db.log"
    sed -n 's/.*\] \(Wrote .*\)/\1/p' "logs/convert_$db.log"
done

step "(b) mean image of base_train_lmdb"
caffe_ft compute_image_mean base_train_lmdb mean.binaryproto 2> logs/mean.log
sed -n 's/.*\] \(mean_value .*\)/\1/p' logs/mean.log

step "(c) base LeNet on the digits 0-4"
caffe_ft train -solver lenet_solver.prototxt 2> logs/base_train.log
BASE="base_iter_$(max_iter lenet_solver.prototxt).caffemodel"
echo "base net test accuracy on 0-4: $(accuracy logs/base_train.log) ($BASE)"

# The scratch run uses the fine-tuning solver as it is; only the name its
# snapshots are written under differs.
sed 's/^snapshot_prefix: .*/snapshot_prefix: "scratch"/' lenet_transfer_solver.prototxt \
    > scratch_solver.prototxt
ITERS="$(max_iter lenet_transfer_solver.prototxt)"

step "(d) fine-tune on 5-9 from $BASE (ip2 -> ip2_ft, conv1 frozen)"
caffe_ft train -solver lenet_transfer_solver.prototxt -weights "$BASE" 2> logs/finetune.log
# The train net's load report: which layers came from the base, which kept their filler.
awk '/Weights from/ && !done { on = 1; sub(/^[^]]*\] /, "") }
     on && /^[IWEF][0-9][0-9][0-9][0-9] / && !/Weights from/ { on = 0; done = 1 }
     on { print }' logs/finetune.log

step "(e) the same net and solver from scratch"
caffe_ft train -solver scratch_solver.prototxt 2> logs/scratch.log

held_out=(sets/transfer_test/*/*.png)
step "(f) both scored on the ${#held_out[@]} held-out images of 5-9"
caffe_ft test -model lenet_transfer_train_val.prototxt -weights "finetuned_iter_$ITERS.caffemodel" \
    -iterations 1 2> logs/test_finetuned.log
caffe_ft test -model lenet_transfer_train_val.prototxt -weights "scratch_iter_$ITERS.caffemodel" \
    -iterations 1 2> logs/test_scratch.log
FINETUNED="$(accuracy logs/test_finetuned.log)"
SCRATCH="$(accuracy logs/test_scratch.log)"
echo "fine-tuned: $FINETUNED, from scratch: $SCRATCH"

step "(g) snapshots and training curves"
ls ./*_iter_*.caffemodel
caffe_ft plot -output curves.png logs/finetune.log logs/scratch.log

step "(h) classify one held-out image with the fine-tuned net"
held_out=(sets/transfer_test/7/*.png)
IMAGE="${held_out[0]}"
caffe_ft classify -model lenet_transfer_deploy.prototxt -weights "finetuned_iter_$ITERS.caffemodel" \
    -mean mean.binaryproto -scale 0.00390625 -labels transfer_train_lmdb_labels.txt -top_k 3 \
    "$IMAGE" 2> logs/classify.log

printf '\nmain job done in %ds; outputs in %s\n' "$((SECONDS - START))" "$OUT"
echo "fine-tuned: $FINETUNED, from scratch: $SCRATCH"
