package v1

import (
	"crypto/sha256"
	"encoding/hex"
)

// Arch values.
const (
	ArchAMD64 = "amd64"
	ArchARM64 = "arm64"
)

// Template is an element of GET /api/v1/registry/vm.
type Template struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Size int64  `json:"size"`
	Arch string `json:"arch"`
	// LastPull and LastPush are Unix seconds (0: never), as the reference
	// sends them.
	LastPull int64 `json:"last_pull"`
	LastPush int64 `json:"last_push"`
}

// TemplateDetail is GET /api/v1/registry/vm?id=.
type TemplateDetail struct {
	Template
	Versions []TemplateVersion `json:"versions"`
}

// TemplateVersion is one tag of a template.
type TemplateVersion struct {
	Tag          string   `json:"tag"`
	Number       int      `json:"number"`
	Size         int64    `json:"size"`
	Description  string   `json:"description"`
	ConfigFile   string   `json:"config_file"`
	StateFile    string   `json:"state_file"` // the first of state_files, or ""
	Arch         string   `json:"arch"`
	LastPull     int64    `json:"last_pull"`     // Unix seconds, 0: never
	LastPush     int64    `json:"last_push"`     // Unix seconds
	CreationDate int64    `json:"creation_date"` // Unix seconds
	NVRAM        string   `json:"nvram"`
	Images       []string `json:"images"`
	StateFiles   []string `json:"state_files"`
}

// Latest returns the highest-numbered version, or false when there is none.
func (t TemplateDetail) Latest() (TemplateVersion, bool) {
	var best TemplateVersion
	found := false
	for _, v := range t.Versions {
		if !found || v.Number > best.Number {
			best, found = v, true
		}
	}
	return best, found
}

// Disk is GET /api/v1/registry/disk.
type Disk struct {
	Total int64 `json:"total"`
	Free  int64 `json:"free"`
}

// OCITemplateID is the template id of an OCI repository in the registry's
// catalog: a UUID-shaped name derived from the repository's name, so it is
// the same on every registry and node, and stable across pushes.
func OCITemplateID(repo string) string {
	sum := sha256.Sum256([]byte("corral oci repository\x00" + repo))
	h := hex.EncodeToString(sum[:16])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
