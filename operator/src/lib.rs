//! Appstrate Kubernetes operator.
