"""Caffe's random numbers, draw for draw: boost::mt19937 streams (engine),
Caffe's global generator (global_rng), and the boost distributions Caffe's
fillers, Dropout and data layers sample from (boost, ziggurat)."""
