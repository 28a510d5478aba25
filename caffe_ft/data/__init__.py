"""Caffe's data: Datums in LMDB (built by convert_imageset, averaged by
compute_image_mean) and the sources and transforms the data layers use."""
