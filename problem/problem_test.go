package problem

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
)

func TestShape(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, 404, `unknown backend "a>b"`)
	if rec.Code != 404 || rec.Header().Get("Content-Type") != ContentType {
		t.Fatalf("%d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	if got := rec.Body.String(); got != `{"type":"/problems/not-found","title":"Not Found","status":404,"detail":"unknown backend \"a>b\""}` {
		t.Fatalf("body %s", got)
	}
	var d Details
	if err := json.Unmarshal(New(418, "x").JSON(), &d); err != nil || d.Type != "/problems/error" || d.Title != "I'm a teapot" {
		t.Fatalf("unknown status: %+v %v", d, err)
	}
}
