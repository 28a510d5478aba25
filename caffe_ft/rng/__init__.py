"""Caffe's random numbers, draw for draw: boost::mt19937 streams (engine),
Caffe's global generator (global_rng), the boost distributions its fillers,
Dropout and data layers sample from (boost, ziggurat), and glibc's rand()
under std::random_shuffle (c_rand)."""
