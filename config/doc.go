// Package config holds the platform's deployment files, not code: the
// generated Knative Services (knative/), the router's Deployment, Service and
// PodDisruptionBudget (router/), RBAC, NetworkPolicies, the eBPF
// agent's DaemonSet and Falco rules (security/), Prometheus Operator objects
// (monitoring/) and the flag definitions (flags/). Its tests decode every
// YAML document strictly into its typed object, run Knative's own defaulting
// and validation and the Service CRD's structural schema on the Knative
// Services, check the security and SLO invariants, fail when knative/ drifts
// from function.yaml and flags.json, and check the repository's Dockerfile.
package config
