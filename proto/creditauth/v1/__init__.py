"""creditauth.v1: stubs generated from authorization.proto at install time."""
