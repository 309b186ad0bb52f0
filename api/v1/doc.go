// Package v1 holds the wire types of Corral's /api/v1 (the reference product's
// controller API, which existing CI integrations speak) and of the node agent's
// protocol. Server, node agent, CLI and tests all share these definitions.
package v1

// Version is reported by /api/v1/status and `corral version`.
var Version = "0.1.0-dev"
