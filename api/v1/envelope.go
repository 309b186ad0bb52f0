package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// Envelope wraps every /api/v1 response.
type Envelope struct {
	Status  string          `json:"status"` // "OK" or "FAIL"
	Message string          `json:"message"`
	Body    json.RawMessage `json:"body,omitempty"`
}

const (
	StatusOK   = "OK"
	StatusFAIL = "FAIL"
)

// Messages that clients compare verbatim.
const (
	MsgNotFound        = "Not found"
	MsgNotInRegistry   = "VM not in the registry"
	MsgAuthRequired    = "Authentication Required"
	msgNoSuchTagPrefix = "No such tag "
)

// MsgNoSuchTag is the exact FAIL message for an unknown tag.
func MsgNoSuchTag(tag string) string { return msgNoSuchTagPrefix + tag }

// FlexInt accepts a JSON number or a numeric string ("3"), as clients send both.
type FlexInt int64

func (f *FlexInt) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		s = strings.TrimSpace(s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		fl, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || fl != float64(int64(fl)) {
			return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[int64]()}
		}
		n = int64(fl)
	}
	*f = FlexInt(n)
	return nil
}

// FlexBool accepts true/false, "true"/"false", 1/0.
type FlexBool bool

func (f *FlexBool) UnmarshalJSON(b []byte) error {
	s := strings.Trim(strings.TrimSpace(string(b)), `"`)
	switch strings.ToLower(s) {
	case "true", "1", "yes":
		*f = true
	case "false", "0", "no", "", "null":
		*f = false
	default:
		return &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[bool]()}
	}
	return nil
}

// FieldError names the request field that is wrong; the API turns it into a
// FAIL message clients can show to a user.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Reason) }

// Decode parses a JSON body into v whatever the Content-Type, ignoring unknown
// fields, and names the offending field when a value has the wrong type.
func Decode(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return &FieldError{Field: "body", Reason: "must be a JSON object, got " + typeErr.Value}
		}
		return &FieldError{Field: typeErr.Field, Reason: fmt.Sprintf("must be %s, got %s", kindName(typeErr.Type), typeErr.Value)}
	}
	return &FieldError{Field: "body", Reason: "malformed JSON: " + err.Error()}
}

// kindName says in words what a Go field type accepts on the wire.
func kindName(t reflect.Type) string {
	if t == reflect.TypeFor[FlexSize]() {
		return `a size: bytes, or a number with K, M, G or T (powers of 1024, e.g. "256G")`
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer (number or numeric string)"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

// FlexSize is a byte count sent as a number, a numeric string, or a string
// with a unit ("256G", "512M", "1.5T", "256GB", "256GiB"; powers of 1024).
type FlexSize int64

func (f *FlexSize) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	bad := &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[FlexSize]()}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return bad
		}
	}
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	shift := 0
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			shift, t = 10*(i+1), t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v < 0 || v*float64(int64(1)<<shift) > 1<<62 {
		return bad
	}
	*f = FlexSize(v * float64(int64(1)<<shift))
	return nil
}
