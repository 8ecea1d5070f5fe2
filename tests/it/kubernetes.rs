//! deploy/kubernetes/: written by the Kubernetes manifests work (issue 20).
