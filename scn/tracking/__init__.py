"""Tracking out: local metrics files and Weights & Biases."""
