package v1

import (
	"encoding/json"
	"testing"
)

// FuzzStartRequest: any body decodes to a valid spec or a field error,
// never a panic, and a valid spec is within the documented bounds.
func FuzzStartRequest(f *testing.F) {
	for _, seed := range []string{
		`{"vmid":"x"}`, `{"vmid":"x","count":"3","priority":5,"startup_script":"ZWNobyBoaQ==","metadata":{"a":[1,{"b":null}]}}`,
		`{"vmid":"x","disk":{"size":-1}}`, `{"vmid":"x","metadata":[[[[[[]]]]]]}`, `[1]`, `{"vmid":5}`, `{"count":1e99}`,
		`{"vmid":"x","metadata":{"s":"\"{{{{"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req StartRequest
		if Decode(body, &req) != nil {
			return
		}
		spec, err := req.Normalize()
		if err != nil {
			if _, ok := err.(*FieldError); !ok {
				t.Fatalf("Normalize(%q): %T %v, want a *FieldError", body, err, err)
			}
			return
		}
		if spec.Count < 1 || spec.Count > MaxCount || len(spec.StartupScript) > MaxScriptBytes || len(spec.Metadata) > MaxMetadataBytes {
			t.Fatalf("Normalize(%q) accepted an out-of-bounds spec: count %d script %d metadata %d", body, spec.Count, len(spec.StartupScript), len(spec.Metadata))
		}
		if len(spec.Metadata) > 0 {
			var obj map[string]any
			if json.Unmarshal(spec.Metadata, &obj) != nil {
				t.Fatalf("accepted metadata that is not an object: %s", spec.Metadata)
			}
		}
	})
}
