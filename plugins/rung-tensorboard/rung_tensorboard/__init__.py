"""rung-tensorboard: the `tensorboard` metric sink (event files under the run folder).

`plugin` registers it; `sink` writes the events with TensorBoard's own event-file writer and
protobufs, so it works in torch-only, jax-only and TensorFlow-free installs alike.
"""
