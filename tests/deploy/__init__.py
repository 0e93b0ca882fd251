"""Offline checks of deploy/: Kubernetes manifests, the Serve config, the image."""
