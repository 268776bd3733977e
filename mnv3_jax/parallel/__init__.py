"""Data parallelism: the device mesh and batch sharding, and the multi-host cluster setup."""
