"""Generated gRPC/protobuf code for the creditauth API (built from proto/ at install time)."""
