"""Datasets as Caffe stores them: Datums in LMDB, built by convert_imageset
and averaged by compute_image_mean."""
