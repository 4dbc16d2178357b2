"""
Deployment artifacts against the real tools: container images built with
podman and run from their own file system, systemd units checked by
systemd-analyze, install.sh in a Debian chroot, Compose and Kubernetes
files parsed and checked.
"""
