//! A real kube-apiserver for end-to-end tests (scripts/dev-cluster.sh); see kube_e2e.rs.
