// Package kubernetes holds Corral's Kubernetes HA manifests (kustomize-ready);
// its test decodes them strictly with the Kubernetes API types and checks the
// wiring.
package kubernetes
