package registry

import "testing"

// FuzzManifestReferences: any manifest bytes parse or fail cleanly, and
// every reference returned is a valid digest (the GC and the blob links
// rely on it).
func FuzzManifestReferences(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"config":{"digest":"sha256:` + "ab" + "0000000000000000000000000000000000000000000000000000000000000000"[2:] + `"},"layers":[]}`))
	f.Add([]byte(`{"manifests":[{"digest":"sha256:zz"}]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		blobs, manifests, err := manifestReferences(data)
		if err != nil {
			return
		}
		for _, d := range append(blobs, manifests...) {
			if _, err := ParseDigest(d); err != nil {
				t.Fatalf("manifestReferences(%q) returned invalid digest %q", data, d)
			}
		}
	})
}
