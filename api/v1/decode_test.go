package v1

import "testing"

func TestNormalizeDefaultsAndNumericStrings(t *testing.T) {
	var req StartRequest
	if err := Decode([]byte(`{"vmid":"t","count":"3","priority":" 7 ","script_monitoring":"true","startup_script_condition":1,"ignored":[1]}`), &req); err != nil {
		t.Fatal(err)
	}
	spec, err := req.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if spec.Count != 3 || spec.Priority != 7 || !spec.ScriptMonitoring || spec.WaitForNetwork || spec.ScriptTimeout != DefaultScriptTimeout {
		t.Fatalf("spec %+v", spec)
	}
	var bare StartRequest
	_ = Decode([]byte(`{"vmid":"t"}`), &bare)
	spec, _ = bare.Normalize()
	if spec.Count != 1 || spec.Priority != DefaultPriority || !spec.WaitForNetwork || spec.ScriptFailHandler != FailHandlerStop {
		t.Fatalf("defaults %+v", spec)
	}
}

func TestDecodeNamesTheField(t *testing.T) {
	tests := []struct{ body, want string }{
		{`{"count":"x"}`, `count: must be an integer (number or numeric string), got "x"`},
		{`{"disk":{"size":"big"}}`, `disk.size: must be a size: bytes, or a number with K, M, G or T (powers of 1024, e.g. "256G"), got "big"`},
		{`{"vmid":{}}`, `vmid: must be a string, got object`},
		{`"hello"`, `body: must be a JSON object, got string`},
		{`{`, `body: malformed JSON: unexpected end of JSON input`},
	}
	for _, tc := range tests {
		var req StartRequest
		err := Decode([]byte(tc.body), &req)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v, want %s", tc.body, err, tc.want)
		}
	}
}

func TestListItemNulls(t *testing.T) {
	item := Instance{InstanceID: "i"}.ListItem()
	if item.ExternalID != nil || item.Name != nil {
		t.Fatal("unset external_id/name must be null in list items")
	}
	item = Instance{InstanceID: "i", ExternalID: "e", Name: "n"}.ListItem()
	if *item.ExternalID != "e" || *item.Name != "n" {
		t.Fatal("set values must be kept")
	}
}

// disk.size takes a unit, as the reference's clients send it ("256G" was
// refused: must be an integer).
func TestDiskSizeWithUnit(t *testing.T) {
	for in, want := range map[string]int64{`"256G"`: 256 << 30, `"512M"`: 512 << 20, `"1.5T"`: 3 << 39, `"256GiB"`: 256 << 30,
		`"100GB"`: 100 << 30, `1073741824`: 1 << 30, `"4096"`: 4096} {
		var r StartRequest
		if err := Decode([]byte(`{"vmid":"x","disk":{"size":`+in+`}}`), &r); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		s, err := r.Normalize()
		if err != nil || s.DiskSize != want {
			t.Fatalf("%s: %d %v, want %d", in, s.DiskSize, err, want)
		}
	}
}
