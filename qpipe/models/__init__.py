"""Architectures: one file per model (its nn.Module and SPEC), the registry, and configuration."""
