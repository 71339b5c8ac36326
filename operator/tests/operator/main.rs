//! Integration tests of the operator: generated CRD, golden desired objects, reconcile against
//! a fake API server (kube-fake-client, tower-test), the Helm chart, and `#[ignore]`d tests
//! against a real cluster (`KUBECONFIG`).

mod common;

mod binary;
mod chart;
mod crd;
mod credentials;
mod e2e;
mod e2e_recovery;
mod finalizer;
mod golden;
mod mock;
mod mocked;
mod mocked_apply;
mod mocked_writes;
mod network;
mod reconcile;
