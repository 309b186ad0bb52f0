package v1

import (
	"encoding/json"
	"testing"
)

// An unset fallback is null, as the reference sends it (it was ""), and
// both read back.
func TestGroupFallbackNull(t *testing.T) {
	for g, want := range map[Group]string{
		{ID: "a", Name: "n"}:                       `{"id":"a","name":"n","description":"","fallback_group_id":null}`,
		{ID: "a", Name: "n", FallbackGroupID: "b"}: `{"id":"a","name":"n","description":"","fallback_group_id":"b"}`,
	} {
		data, err := json.Marshal(g)
		if err != nil || string(data) != want {
			t.Fatalf("%+v: %s %v, want %s", g, data, err, want)
		}
		var back Group
		if err := json.Unmarshal(data, &back); err != nil || back != g {
			t.Fatalf("read back %+v %v", back, err)
		}
	}
}
