package schemas

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	s, err := Compile("log.json")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, body, want string
	}{
		{"valid", `{"records":[{"level":"info","msg":"hi"}]}`, ""},
		{"malformed", `{"records":`, "not valid JSON"},
		{"missing records", `{}`, "records"},
		{"bad level", `{"records":[{"level":"loud","msg":"x"}]}`, "/records/0/level"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := s.Validate([]byte(c.body))
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to mention %q", err, c.want)
			}
			if strings.Contains(err.Error(), "file://") {
				t.Fatalf("error leaks the schema location: %v", err)
			}
		})
	}
	if err := s.Validate([]byte("nope")); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
}

func TestCompileErrors(t *testing.T) {
	if _, err := Compile("missing.json"); err == nil {
		t.Fatal("missing file compiled")
	}
}
