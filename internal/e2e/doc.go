// Package e2e holds whole-cloud tests: real embedded etcd, controllers, node
// agents and HTTP on loopback, started through internal/testenv.
package e2e
