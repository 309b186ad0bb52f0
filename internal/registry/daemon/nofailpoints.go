//go:build !failpoints

package daemon

import (
	"github.com/corral-build/corral/internal/registry"
	"github.com/corral-build/corral/internal/registry/storage"
)

// wrapStorage is the identity in release builds (see failpoints.go).
func wrapStorage(b storage.Backend) storage.Backend { return b }

// tune leaves the registry as configured in release builds.
func tune(*registry.Registry) {}
