//! Membership from Kubernetes Leases (written next).
