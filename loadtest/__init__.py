"""Load generation against the creditauth gRPC API (reaches the system only over gRPC)."""
