package filesystem

import (
	"testing"

	"github.com/corral-build/corral/internal/registry/storage"
	"github.com/corral-build/corral/internal/registry/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}
