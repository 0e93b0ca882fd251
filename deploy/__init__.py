"""Deployment tooling: Kubernetes manifests (k8s/), the image (docker/), the offline renderer."""
