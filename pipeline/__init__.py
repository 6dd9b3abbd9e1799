"""Tracked re-creation of the transposed-convolution ("deconvolution") MNIST tutorial."""
