"""Interop tests against the real rpc.mountd from nfs-utils (see README.md here)."""
