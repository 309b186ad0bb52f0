package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/corral-build/corral/client"
	"github.com/corral-build/corral/internal/testenv"
)

// TestOCICatalogListsTemplates: /v2/_catalog lists templates pushed through
// the Anka registry API too (where the name is a repository name), with
// their tags, beside the OCI repositories.
func TestOCICatalogListsTemplates(t *testing.T) {
	reg := testenv.StartRegistry(t, t.TempDir())
	rc, _ := client.NewRegistry(reg.URL)
	ctx := context.Background()
	src := newVMDir(t, 0, 1)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(fmt.Sprintf(`{"arch":%q}`, runtimeArch())), 0o644)
	for _, tag := range []string{"v1", "v2"} {
		if _, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "ventura-base", Tag: tag}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rc.Push(ctx, client.PushOptions{Source: src, Template: "Not_A_Repo", Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	get := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(reg.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		json.NewDecoder(resp.Body).Decode(v)
	}
	var cat struct{ Repositories []string }
	get("/v2/_catalog", &cat)
	if !slices.Contains(cat.Repositories, "ventura-base") || slices.Contains(cat.Repositories, "Not_A_Repo") {
		t.Fatalf("catalog %v", cat.Repositories)
	}
	var tags struct{ Tags []string }
	get("/v2/ventura-base/tags/list", &tags)
	if !slices.Equal(tags.Tags, []string{"v1", "v2"}) {
		t.Fatalf("tags %v", tags.Tags)
	}
}
