"""Numpy over the store: head metrics, rollout, token alignment and neuron differences between captures."""
