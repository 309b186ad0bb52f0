package testenv

import (
	"os"
	"testing"

	"github.com/corral-build/corral/internal/directio"
)

// PagesCached counts the pages of path that are in the page cache
// (mincore), and the file's pages in all.
func PagesCached(t testing.TB, path string) (resident, pages int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	resident, pages, err = directio.Resident(f, 0, int(st.Size()))
	if err != nil {
		t.Fatalf("mincore %s: %v", path, err)
	}
	return resident, pages
}
