"""Benchmarks that start real servers and drive them with the load generator over gRPC."""
